import Foundation
import JITCore
public import JITFleet

/// An `allowed_signers` file (ssh-keygen(1), ALLOWED SIGNERS) that an admin keeps beside the keys added with
/// `jitd server key add`. Read at each login, parsed strictly: an error names the file and line, and a file
/// with any error lets no one in through it (the registered keys in PostgreSQL still work).
///
/// Taken: `PRINCIPALS [namespaces="jit,..."] TYPE BASE64 [COMMENT]`, principals being user names
/// (comma-separated). Refused with a reason: patterns (`*`, `?`, `!`), `cert-authority`, `valid-after`,
/// `valid-before`, and key types login does not accept.
public struct AllowedSigners: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var principals: [String]
        public var key: SSHPublicKey
        public var line: Int
    }
    public var entries: [Entry]

    public static func load(path: String) throws(FleetError) -> AllowedSigners {
        try SecureFiles.checkNotWritableByOthers(path, what: "login.allowed_signers")
        return try parse(try SecureFiles.read(path, what: "login.allowed_signers"), file: path)
    }

    public static func parse(_ text: String, file: String) throws(FleetError) -> AllowedSigners {
        var out: [Entry] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let n = i + 1
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            func fail(_ why: String) -> FleetError { FleetError("bad_signers", "\(file):\(n): \(why)") }
            var fields = try words(line, fail)
            guard fields.count >= 3 else { throw fail("an entry is 'USER[,USER...] [namespaces=\"jit\"] TYPE BASE64 [COMMENT]'") }
            let principals = fields.removeFirst().split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            for p in principals {
                if p.contains(where: { "*?!".contains($0) }) { throw fail("the principal '\(p)' is a pattern; list user names") }
                guard Names.isValid(p) else { throw fail("the principal '\(p)' is not a user name") }
            }
            if !SSHPublicKey.supported.contains(fields[0]) && !fields[0].hasPrefix("ssh-") && !fields[0].hasPrefix("ecdsa-") && !fields[0].hasPrefix("sk-") {
                let options = fields.removeFirst()
                try checkOptions(options, fail)
            }
            guard fields.count >= 2 else { throw fail("the key's type and base64 data are missing") }
            let key: SSHPublicKey
            do { key = try SSHPublicKey(line: fields.joined(separator: " ")) } catch { throw fail(error.message) }
            out.append(Entry(principals: principals, key: key, line: n))
        }
        return AllowedSigners(entries: out)
    }

    /// The keys this file lets `user` log in with.
    public func keys(of user: String) -> [SSHPublicKey] {
        entries.filter { $0.principals.contains(user) }.map(\.key)
    }

    static func checkOptions(_ options: String, _ fail: (String) -> FleetError) throws(FleetError) {
        for o in try split(options, on: ",", fail) {
            var name = o.lowercased(), value: String? = nil
            if let eq = o.firstIndex(of: "=") {
                name = String(o[..<eq]).lowercased()
                value = String(o[o.index(after: eq)...])
            }
            switch name {
            case "namespaces":
                guard let v = value, v.hasPrefix("\""), v.hasSuffix("\""), v.count >= 2 else { throw fail("namespaces= takes a quoted list, e.g. namespaces=\"jit\"") }
                let list = v.dropFirst().dropLast().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                guard list.contains("jit") else { throw fail("this key is limited to namespaces \(v), which do not include \"jit\"; add jit or remove the line") }
            case "cert-authority": throw fail("cert-authority is not supported for jit login; list each person's own key")
            case "valid-after", "valid-before": throw fail("\(name) is not supported for jit login; remove the key when it should stop working")
            default: throw fail("the option '\(name)' is not known (only namespaces=\"jit\")")
            }
        }
    }

    /// Splits on whitespace, keeping double-quoted runs together.
    static func words(_ s: String, _ fail: (String) -> FleetError) throws(FleetError) -> [String] {
        var out: [String] = [], cur = "", quoted = false
        for ch in s {
            if ch == "\"" { quoted.toggle(); cur.append(ch); continue }
            if (ch == " " || ch == "\t") && !quoted {
                if !cur.isEmpty { out.append(cur); cur = "" }
                continue
            }
            cur.append(ch)
        }
        guard !quoted else { throw fail("a quote is not closed") }
        if !cur.isEmpty { out.append(cur) }
        return out
    }

    static func split(_ s: String, on sep: Character, _ fail: (String) -> FleetError) throws(FleetError) -> [String] {
        var out: [String] = [], cur = "", quoted = false
        for ch in s {
            if ch == "\"" { quoted.toggle() }
            if ch == sep && !quoted { out.append(cur); cur = ""; continue }
            cur.append(ch)
        }
        out.append(cur)
        return out
    }
}
