#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// What one sudo grant allows, in the words sudoers needs. It is checked by ``SudoersRenderer`` before
/// anything is written, because every field ends up in a file that sudo trusts.
public struct SudoersEntry: Sendable, Equatable {
    /// The grant's id; the file is named after it, so it must be positive.
    public var grantID: Int64
    /// The login name that may run the commands: a plain POSIX name (`[a-z_][a-z0-9_-]*[$]?`, at most 32).
    public var user: String
    /// The user the commands run as, e.g. `root`; same rules as ``user``.
    public var runAs: String
    /// `nil` allows every command (`ALL`). Otherwise each element is one exact command line: an absolute,
    /// normalised path, then optional arguments separated by single spaces. The arguments are exact: a bare
    /// path allows that program with *no* arguments (rendered `/usr/bin/id ""`), and
    /// `/usr/bin/systemctl restart nginx` allows exactly those two arguments. An empty list is an error.
    public var commands: [String]?
    /// Whether sudo skips asking for the user's password (`NOPASSWD:`), else `PASSWD:` is written explicitly.
    public var noPassword: Bool
    /// When sudo itself stops honouring the entry, rendered `NOTAFTER=YYYYMMDDHHMMSSZ` in UTC (seconds are
    /// truncated, so the grant never outlives this instant).
    public var notAfter: Date
    /// Set only when the policy explicitly allowed the glob characters `* ? [ ]` in commands. Everything
    /// else is still refused. Note `/path *` does not match a call with no arguments.
    public var allowWildcards: Bool
    /// sudo records what the command prints (`LOG_OUTPUT:`) and, with ``logInput``, what is typed (`LOG_INPUT:`).
    public var logOutput: Bool = false
    public var logInput: Bool = false
    /// With logging on: the folder sudo writes this grant's I/O logs to (`Defaults:USER iolog_dir=...`); an
    /// absolute, normalised path of letters, digits and `/ . _ -` only.
    public var ioLogDir: String? = nil

    public init(
        grantID: Int64,
        user: String,
        runAs: String = "root",
        commands: [String]?,
        noPassword: Bool,
        notAfter: Date,
        allowWildcards: Bool = false
    ) {
        self.grantID = grantID
        self.user = user
        self.runAs = runAs
        self.commands = commands
        self.noPassword = noPassword
        self.notAfter = notAfter
        self.allowWildcards = allowWildcards
    }
}

/// Why a sudoers operation was refused or failed. The message says what to fix; the code is for programs.
public struct SudoersError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A stable, machine-readable reason.
    public struct Code: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidGrantID = Code(rawValue: "invalid-grant-id")
        public static let invalidUser = Code(rawValue: "invalid-user")
        public static let invalidRunAs = Code(rawValue: "invalid-runas")
        public static let invalidCommand = Code(rawValue: "invalid-command")
        public static let invalidDate = Code(rawValue: "invalid-date")
        /// The entry's `notAfter` has already passed; installing it would be pointless.
        public static let expired = Code(rawValue: "expired")
        /// The sudoers directory is missing, a symlink, not root's, or writable by others.
        public static let unsafeDirectory = Code(rawValue: "unsafe-directory")
        /// `visudo -cf` refused the rendered file (or could not be run); nothing was installed.
        public static let validationFailed = Code(rawValue: "validation-failed")
        /// A system call failed (read-only file system, full disk, ...); nothing partial was left.
        public static let io = Code(rawValue: "io")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// One difference that ``SudoersDirectory/reconcile(active:now:)`` found and acted on, for the audit trail.
public struct SudoersDrift: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A `jit-grant-N` file with no active grant was removed.
        case removedStale
        /// An active grant had no file; it was written.
        case restoredMissing
        /// An active grant's file differed (content, mode, owner or type); it was rewritten.
        case repairedAltered
        /// The drift could not be fixed; any altered file for the grant was removed rather than trusted.
        case failed(SudoersError)
    }

    public var grantID: Int64
    public var kind: Kind

    public init(grantID: Int64, kind: Kind) {
        self.grantID = grantID
        self.kind = kind
    }

    public var description: String {
        switch kind {
        case .removedStale: "grant \(grantID): removed a sudoers file with no active grant"
        case .restoredMissing: "grant \(grantID): restored a missing sudoers file"
        case .repairedAltered: "grant \(grantID): rewrote a sudoers file that had been altered"
        case .failed(let error): "grant \(grantID): could not reconcile the sudoers file: \(error.message)"
        }
    }
}
