import Foundation
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
