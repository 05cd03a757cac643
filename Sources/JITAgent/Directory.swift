import Foundation
import Synchronization
public import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// Looks users and groups up through NSS (so LDAP/SSSD users and groups work).
public protocol UserDirectory: Sendable {
    func user(uid: UInt32) -> Identity?
    func user(name: String) -> Identity?
    func groupExists(_ name: String) -> Bool
}

/// The host's NSS, through getpwuid_r / getpwnam_r / getgrouplist / getgrgid_r.
public struct SystemDirectory: UserDirectory {
    public init() {}

    public func user(uid: UInt32) -> Identity? {
        withPasswd { pw, buf, len, res in getpwuid_r(uid, pw, buf, len, res) }
    }

    public func user(name: String) -> Identity? {
        guard Names.isValid(name) else { return nil }
        return withPasswd { pw, buf, len, res in getpwnam_r(name, pw, buf, len, res) }
    }

    public func groupExists(_ name: String) -> Bool {
        var gr = group()
        var res: UnsafeMutablePointer<group>? = nil
        var buf = [CChar](repeating: 0, count: 16384)
        let rc = getgrnam_r(name, &gr, &buf, buf.count, &res)
        return rc == 0 && res != nil
    }

    private func withPasswd(
        _ lookup: (UnsafeMutablePointer<passwd>, UnsafeMutablePointer<CChar>, Int, UnsafeMutablePointer<UnsafeMutablePointer<passwd>?>) -> Int32
    ) -> Identity? {
        var pw = passwd()
        var res: UnsafeMutablePointer<passwd>? = nil
        var buf = [CChar](repeating: 0, count: 16384)
        let rc = buf.withUnsafeMutableBufferPointer { b in lookup(&pw, b.baseAddress!, b.count, &res) }
        guard rc == 0, res != nil, let namePtr = pw.pw_name else { return nil }
        let name = String(cString: namePtr)
        return Identity(uid: pw.pw_uid, name: name, groups: groups(of: name, primary: pw.pw_gid))
    }

    private func groups(of name: String, primary: gid_t) -> Set<String> {
        var count: Int32 = 64
        var gids = [gid_t](repeating: 0, count: Int(count))
        while getgrouplist(name, primary, &gids, &count) == -1 {
            guard count < 65536 else { break }
            count = max(count, Int32(gids.count * 2))
            gids = [gid_t](repeating: 0, count: Int(count))
        }
        var out = Set<String>()
        var buf = [CChar](repeating: 0, count: 65536)
        for gid in gids.prefix(Int(max(count, 0))) {
            var gr = group()
            var res: UnsafeMutablePointer<group>? = nil
            if getgrgid_r(gid, &gr, &buf, buf.count, &res) == 0, res != nil, let n = gr.gr_name {
                out.insert(String(cString: n))
            }
        }
        return out
    }
}

/// NSS answers kept for a few seconds: every connection needs the caller's name and groups, and every
/// check the user's, and NSS (files, SSSD, LDAP) costs tens of microseconds to milliseconds per lookup.
/// A change of group membership is seen after at most `ttl` seconds (SSSD itself caches far longer).
public final class CachingDirectory: UserDirectory {
    let base: any UserDirectory
    let ttl: Double
    let byUID = Mutex<[UInt32: (Identity?, Date)]>([:])
    let byName = Mutex<[String: (Identity?, Date)]>([:])

    public init(_ base: any UserDirectory = SystemDirectory(), ttl: Double = 5) {
        self.base = base
        self.ttl = ttl
    }

    public func user(uid: UInt32) -> Identity? {
        let now = Date()
        if let (id, at) = byUID.withLock({ $0[uid] }), now.timeIntervalSince(at) < ttl { return id }
        let id = base.user(uid: uid)
        byUID.withLock { d in
            if d.count > 10_000 { d.removeAll() }
            d[uid] = (id, now)
        }
        return id
    }

    public func user(name: String) -> Identity? {
        let now = Date()
        if let (id, at) = byName.withLock({ $0[name] }), now.timeIntervalSince(at) < ttl { return id }
        let id = base.user(name: name)
        byName.withLock { d in
            if d.count > 10_000 { d.removeAll() }
            d[name] = (id, now)
        }
        return id
    }

    public func groupExists(_ name: String) -> Bool { base.groupExists(name) }
}
