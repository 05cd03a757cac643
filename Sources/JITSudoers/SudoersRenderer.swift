#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Turns a ``SudoersEntry`` into sudoers text. It is pure (no clock, no files) and refuses any input that
/// could carry sudoers syntax, because an ordinary user may choose the words that end up here.
///
/// The checks are allow-lists, not deny-lists: names are plain lower-case POSIX names, and commands use
/// only letters, digits, space and `/ . _ - + @ %` (plus `* ? [ ]` when the entry allows wildcards). That
/// rules out every sudoers metacharacter (`, : = ! \ # " $ ^ ( )` and friends) and all control characters.
public enum SudoersRenderer {
    /// Longest user or run-as name accepted (Linux's usual limit).
    public static let maxNameLength = 32
    /// Longest single command line accepted.
    public static let maxCommandLength = 4096
    /// Most commands one grant may list.
    public static let maxCommands = 256

    /// Validates every field of `entry`, then renders one line per command, each carrying the host, run-as
    /// user, `NOTAFTER` and the password tag, so nothing depends on sudoers' inheritance rules.
    public static func render(_ entry: SudoersEntry) throws(SudoersError) -> String {
        try validateGrantID(entry.grantID)
        try validateName(entry.user, code: .invalidUser, what: "user name")
        try validateName(entry.runAs, code: .invalidRunAs, what: "run-as user name")
        let notAfter = try sudoersTime(entry.notAfter)
        let commands: [String]
        if let list = entry.commands {
            guard !list.isEmpty else {
                throw SudoersError(
                    .invalidCommand,
                    "the command list is empty; list at least one command, or grant all commands explicitly")
            }
            guard list.count <= maxCommands else {
                throw SudoersError(
                    .invalidCommand, "\(list.count) commands is more than the \(maxCommands) one grant may hold")
            }
            commands = try list.map { (command) throws(SudoersError) in
                try renderCommand(command, allowWildcards: entry.allowWildcards)
            }
        } else {
            commands = ["ALL"]
        }
        var tag = entry.noPassword ? "NOPASSWD:" : "PASSWD:"
        var text = "# jit-access grant \(entry.grantID) for \(entry.user): managed by jitd; edits are reverted.\n"
        if entry.logOutput || entry.logInput {
            guard entry.logOutput else {
                throw SudoersError(.invalidCommand, "an input log without the output log cannot be replayed; record output too")
            }
            guard let dir = entry.ioLogDir else {
                throw SudoersError(.invalidCommand, "a recorded grant needs the folder its I/O logs go to")
            }
            try validateLogDir(dir)
            // sudo refuses the command when it cannot write the log (its default; never turned off here).
            // log_output for the user as well as the tags: sudo applies the tags of the *last* matching
            // entry, so a standing entry read after this file would otherwise run the use unrecorded.
            text += "Defaults:\(entry.user) iolog_dir=\(dir), log_output\(entry.logInput ? ", log_input" : "")\n"
            tag += " LOG_OUTPUT:" + (entry.logInput ? " LOG_INPUT:" : "")
        }
        for command in commands {
            text += "\(entry.user) ALL=(\(entry.runAs)) NOTAFTER=\(notAfter) \(tag) \(command)\n"
        }
        return text
    }

    /// An I/O log folder: absolute, normalised, only letters, digits and `/ . _ -` (no sudoers escapes such
    /// as `%{user}`, no spaces, quotes or commas).
    static func validateLogDir(_ dir: String) throws(SudoersError) {
        let bytes = Array(dir.utf8)
        let ok = bytes.count > 1 && bytes.count <= 256 && bytes[0] == UInt8(ascii: "/") && bytes.allSatisfy { b in
            (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "/") || b == UInt8(ascii: ".")
                || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
        }
        let segments = dir.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard ok, !segments.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            throw SudoersError(.invalidCommand, "the I/O log folder \(quoted(dir)) must be an absolute, normalised path of letters, digits and / . _ -")
        }
    }

    static func validateGrantID(_ id: Int64) throws(SudoersError) {
        guard id > 0 else {
            throw SudoersError(.invalidGrantID, "grant id \(id) is not positive; sudoers files are named by positive ids")
        }
    }

    /// `[a-z_][a-z0-9_-]*[$]?`, 1...32 bytes. Upper case is refused: sudoers reads upper-case words as
    /// aliases (`ALL`, `ADMINS`), and Debian's own name rules never create such users.
    static func validateName(_ name: String, code: SudoersError.Code, what: String) throws(SudoersError) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { throw SudoersError(code, "the \(what) is empty") }
        guard bytes.count <= maxNameLength else {
            throw SudoersError(code, "the \(what) \(quoted(name)) is longer than \(maxNameLength) characters")
        }
        for (index, byte) in bytes.enumerated() {
            let isLower = byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")
            let isDigit = byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
            let ok: Bool
            if index == 0 {
                ok = isLower || byte == UInt8(ascii: "_")
            } else if byte == UInt8(ascii: "$") {
                ok = index == bytes.count - 1
            } else {
                ok = isLower || isDigit || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
            }
            guard ok else {
                throw SudoersError(
                    code,
                    "the \(what) \(quoted(name)) is not a plain POSIX login name: use lower-case letters, digits, "
                        + "'_' and '-', starting with a letter or '_' (no uid '#', group '%', netgroup '+' or alias)")
            }
        }
    }

    static func renderCommand(_ command: String, allowWildcards: Bool) throws(SudoersError) -> String {
        let bytes = Array(command.utf8)
        guard !bytes.isEmpty else { throw SudoersError(.invalidCommand, "a command is empty; give an absolute path") }
        guard bytes.count <= maxCommandLength else {
            throw SudoersError(.invalidCommand, "a command is longer than \(maxCommandLength) bytes")
        }
        guard bytes[0] == UInt8(ascii: "/") else {
            throw SudoersError(
                .invalidCommand,
                "the command \(quoted(command)) is not an absolute path; write it as /path/to/program "
                    + "(sudoers aliases, ALL and sudoedit are not accepted as commands)")
        }
        for byte in bytes where !isCommandByte(byte, allowWildcards: allowWildcards) {
            let shown = byte >= 0x20 && byte < 0x7f ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x\(hex(byte))"
            let wild = isWildcard(byte) ? " (wildcards were not allowed by the policy)" : ""
            throw SudoersError(
                .invalidCommand,
                "the command \(quoted(command)) contains \(shown)\(wild); commands may use only letters, digits, "
                    + "spaces and / . _ - + @ %")
        }
        let words = command.split(separator: " ", omittingEmptySubsequences: false)
        guard !words.contains(where: \.isEmpty) else {
            throw SudoersError(
                .invalidCommand,
                "the command \(quoted(command)) has leading, trailing or repeated spaces; separate arguments by one space")
        }
        let path = String(words[0])
        guard !path.hasSuffix("/") else {
            throw SudoersError(
                .invalidCommand, "the command \(quoted(path)) ends in '/', which sudoers reads as every program in a directory")
        }
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        for segment in segments {
            guard !segment.isEmpty, segment != ".", segment != ".." else {
                throw SudoersError(
                    .invalidCommand,
                    "the command path \(quoted(path)) is not normalised (no '//', '.' or '..'); write the real path")
            }
        }
        if segments.last == "sudoedit" {
            throw SudoersError(.invalidCommand, "sudoedit cannot be granted as a command; grant the file edit another way")
        }
        // sudoers: a bare path allows any arguments, `""` allows none. Grants are exact, so say "none".
        return words.count == 1 ? "\(path) \"\"" : command
    }

    static func isWildcard(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: "*") || byte == UInt8(ascii: "?") || byte == UInt8(ascii: "[") || byte == UInt8(ascii: "]")
    }

    static func isCommandByte(_ byte: UInt8, allowWildcards: Bool) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: " "), UInt8(ascii: "/"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"),
            UInt8(ascii: "+"), UInt8(ascii: "@"), UInt8(ascii: "%"):
            return true
        default:
            return allowWildcards && isWildcard(byte)
        }
    }

    /// `YYYYMMDDHHMMSSZ` in UTC, computed from the epoch, so the process's time zone never matters.
    static func sudoersTime(_ date: Date) throws(SudoersError) -> String {
        let interval = date.timeIntervalSince1970
        // 1970-01-01 ... 9999-12-31T23:59:59Z: sudoers wants four-digit years.
        guard interval.isFinite, interval >= 0, interval < 253_402_300_800 else {
            throw SudoersError(.invalidDate, "the expiry \(interval) s since 1970 is outside the years 1970...9999")
        }
        let seconds = Int64(interval.rounded(.down))
        let days = seconds / 86_400
        let secondOfDay = seconds % 86_400
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468
        let era = z / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return pad(year, 4) + pad(month, 2) + pad(day, 2) + pad(secondOfDay / 3600, 2)
            + pad(secondOfDay / 60 % 60, 2) + pad(secondOfDay % 60, 2) + "Z"
    }

    static func pad(_ value: Int64, _ width: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    static func hex(_ byte: UInt8) -> String {
        let digits = String(byte, radix: 16)
        return digits.count == 1 ? "0" + digits : digits
    }

    /// Shows user input in messages without letting control characters reach a log or terminal.
    static func quoted(_ text: String) -> String {
        var out = "'"
        for scalar in text.unicodeScalars.prefix(200) {
            if scalar.value < 0x20 || scalar.value == 0x7f {
                out += "\\x" + hex(UInt8(scalar.value))
            } else if scalar.value > 0x7f {
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out + (text.unicodeScalars.count > 200 ? "...'" : "'")
    }
}
