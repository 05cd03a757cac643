import Foundation

/// What one sudo use is about to run, as the PAM module read it from sudo's own argv (see pam/jit_sudo.h
/// and pam_jit(8)): the account stage admits the use only under a grant that covers it. Pure: the one
/// look at the file system (is this an executable file?) is handed in.
public struct SudoUse: Equatable, Sendable {
    public enum What: Equatable, Sendable {
        /// This exact command line: an absolute, normalised path and its arguments, single spaces.
        case command(String)
        /// sudo runs nothing (`-l`, `-v`, `-K` without a command).
        case nothing
        /// The module (or this resolution) cannot be sure what runs; the sentence says why.
        case unsure(String)
    }

    public var what: What
    /// The run-as user sudo will use, when known (`root` unless `-u`; `#UID` as sudo writes it).
    public var runAs: String?

    public init(what: What, runAs: String?) {
        self.what = what
        self.runAs = runAs
    }

    /// The path sudo searches when sudoers sets no `secure_path` of its own: Debian 12's shipped value.
    public static let debianSecurePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// Reads the check's sudo fields (`sudo_mode`, `runas`, `command`, `path`, `unsure`). A check without
    /// them (an older module, or a program that is not sudo) is unsure: never guessed.
    public static func from(_ m: Message, isExecutable: (String) -> Bool, isTrustedDir: (String) -> Bool = { _ in true }) -> SudoUse {
        let runAs = m["runas"].flatMap { $0.isEmpty ? nil : $0 }
        switch m["sudo_mode"] {
        case "none":
            return SudoUse(what: .nothing, runAs: runAs)
        case "run":
            guard let line = m["command"], !line.isEmpty else {
                return SudoUse(what: .unsure("the PAM module sent no command"), runAs: runAs)
            }
            if let sc = m["sudo_command"] {
                return SudoUse(what: crossCheck(typed: line, sudoCommand: sc), runAs: runAs)
            }
            return SudoUse(what: resolve(line, userPath: m["path"], isExecutable: isExecutable, isTrustedDir: isTrustedDir), runAs: runAs)
        case "unsure":
            return SudoUse(what: .unsure(m["unsure"] ?? "the PAM module could not tell what sudo runs"), runAs: runAs)
        default:
            return SudoUse(what: .unsure("the PAM module did not say what sudo runs (an older pam_jit.so?)"), runAs: runAs)
        }
    }

    /// Resolves the first word of `line` the way sudo does: an absolute path is taken as it is (it must be
    /// normalised); a bare name is searched in Debian's `secure_path` and in the caller's PATH, and only
    /// when both find the same file is it known (sudo searches one of the two: secure_path when sudoers
    /// sets it, else the caller's PATH). A relative path, or a name found differently, is unsure. Every
    /// folder of the caller's PATH searched up to the hit must be one `isTrustedDir` vouches for (root's,
    /// not writable by others): a folder jitd cannot see into (a home folder) could hold another program.
    public static func resolve(_ line: String, userPath: String?, isExecutable: (String) -> Bool,
                               isTrustedDir: (String) -> Bool = { _ in true }) -> What {
        let words = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard let first = words.first, !first.isEmpty, !words.contains(where: \.isEmpty) else {
            return .unsure("the command line has empty words")
        }
        let rest = words.dropFirst().joined(separator: " ")
        func joined(_ path: String) -> String { rest.isEmpty ? path : path + " " + rest }
        if first.hasPrefix("/") {
            guard isNormalised(first) else { return .unsure("the command path \(first) is not normalised") }
            return .command(joined(first))
        }
        guard !first.contains("/") else { return .unsure("the command \(first) is a relative path") }
        guard let inSecure = search(first, in: debianSecurePath, isExecutable: isExecutable, isTrustedDir: { _ in true }) else {
            return .unsure("\(first) is not in sudo's secure_path")
        }
        guard let userPath else { return .unsure("the caller's PATH is not known, so \(first) may resolve elsewhere") }
        switch search(first, in: userPath, isExecutable: isExecutable, isTrustedDir: isTrustedDir) {
        case .some(let p) where p == inSecure:
            return .command(joined(inSecure))
        case .some(let p):
            return .unsure("\(first) is \(inSecure) in secure_path but \(p) in the caller's PATH")
        case .none:
            return .unsure("\(first) is not found in the caller's PATH the way sudo would search it, or a folder before it there is not root's")
        }
    }

    /// sudo's own `SUDO_COMMAND` (its resolved path and arguments, as the module read it through sudo's
    /// getenv hook) checked against the words typed: the same arguments, and the same path or a bare name
    /// that is that path's last part. Consistent: that command line; otherwise unsure.
    public static func crossCheck(typed: String, sudoCommand: String) -> What {
        let t = typed.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        let c = sudoCommand.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard let path = c.first, isNormalised(path), let first = t.first, Array(t.dropFirst()) == Array(c.dropFirst()) else {
            return .unsure("sudo's SUDO_COMMAND does not match its command line")
        }
        if first.contains("/") {
            guard first == path else { return .unsure("sudo's SUDO_COMMAND does not match its command line") }
        } else {
            guard path.hasSuffix("/" + first) else { return .unsure("sudo's SUDO_COMMAND does not match its command line") }
        }
        return .command(sudoCommand)
    }

    /// The first directory of `path` holding an executable `name`. sudo skips `.` and empty entries
    /// (ignore_dot); any other relative entry makes the search unsure (nil).
    static func search(_ name: String, in path: String, isExecutable: (String) -> Bool, isTrustedDir: (String) -> Bool) -> String? {
        let dirs = path.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard dirs.count <= 128 else { return nil }
        for dir in dirs {
            if dir.isEmpty || dir == "." { continue }
            guard dir.hasPrefix("/"), isTrustedDir(dir) else { return nil }
            let candidate = (dir.hasSuffix("/") ? String(dir.dropLast()) : dir) + "/" + name
            guard isNormalised(candidate) else { return nil }
            if isExecutable(candidate) { return candidate }
        }
        return nil
    }

    /// An absolute path without `//`, `/./`, `/../` or a trailing slash.
    public static func isNormalised(_ p: String) -> Bool {
        guard p.hasPrefix("/"), p.count > 1, !p.hasSuffix("/") else { return false }
        return !p.split(separator: "/", omittingEmptySubsequences: false).dropFirst().contains { $0.isEmpty || $0 == "." || $0 == ".." }
    }

    /// Whether a grant for `scope` as `grantRunAs` admits this use. `runAsName` maps sudo's `#UID` form to
    /// a name. A commands grant needs the exact command line and run-as user; a grant for all commands
    /// needs the run-as user; a use that runs nothing needs any sudo grant.
    public func admitted(by scope: Scope, runAs grantRunAs: String, runAsName: (String) -> String?) -> Bool {
        guard scope.includesSudo else { return false }
        if what == .nothing { return true }
        guard let r = runAs, (r.hasPrefix("#") ? runAsName(r) : r) == grantRunAs else { return false }
        switch (scope, what) {
        case (.sudo, _): return true
        case (.commands(let list), .command(let line)): return list.contains(line)
        default: return false
        }
    }

    /// For the trail: the command line, or a sentence saying it is not known and why.
    public var commandForTrail: String {
        switch what {
        case .command(let c): c
        case .nothing: "(none: sudo runs no command)"
        case .unsure(let why): "(not known: \(why))"
        }
    }

    /// Why no grant admitted this use, for the user.
    public var refusal: String {
        let who = runAs ?? "an unknown run-as user"
        switch what {
        case .command(let c): return "no active grant covers '\(c)' as \(who)"
        case .nothing: return "no active sudo grant"
        case .unsure(let why): return "jit cannot be sure what this sudo runs (\(why)), and only a grant for all commands as \(who) allows that"
        }
    }
}
