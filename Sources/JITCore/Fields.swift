/// Bounds and syntax for every field of every request message, in one place (issue 13).
///
/// The server checks each request against this table before any operation sees it, so no field of any
/// operation is unbounded or carries characters a terminal, a log or a notification would act on. An
/// operation still checks what its values mean (a duration, an ID that exists); this is only their shape.
public enum FieldRules {
    /// What a value may look like.
    public enum Syntax: Sendable {
        /// Printable text a person reads (reason, comment, command, ticket): no control or format characters.
        case text
        /// A user, group or environment name: printable, no spaces.
        case name
        /// Decimal digits only, at most `max`.
        case number(max: Int64)
        /// Only these ASCII bytes.
        case ascii(String)
    }

    public struct Rule: Sendable {
        public var maxBytes: Int
        public var syntax: Syntax
        public var what: String
    }

    /// The largest process ID Linux hands out (`pid_max` can be at most 2^22).
    public static let maxPID: Int64 = 4_194_304

    static let hostChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:%[]"
    static let ttyChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/.-_:"
    static let serviceChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_+"
    static let wordChars = "abcdefghijklmnopqrstuvwxyz0123456789_-"

    /// Fields with their own rule. Every other field is `text` of at most `defaultMaxBytes`.
    public static let rules: [String: Rule] = [
        "user": Rule(maxBytes: 256, syntax: .name, what: "a user name"),
        "runas": Rule(maxBytes: 256, syntax: .name, what: "a user name"),
        "env": Rule(maxBytes: 128, syntax: .name, what: "an environment name"),
        "host": Rule(maxBytes: 253, syntax: .ascii("abcdefghijklmnopqrstuvwxyz0123456789.-"), what: "a host name (lower-case letters, digits, . and -)"),
        "service": Rule(maxBytes: 64, syntax: .ascii(serviceChars), what: "a PAM service name (letters, digits, . - _ +)"),
        "rhost": Rule(maxBytes: 255, syntax: .ascii(hostChars), what: "a host name or address"),
        "tty": Rule(maxBytes: 64, syntax: .ascii(ttyChars), what: "a terminal name like /dev/pts/3"),
        "pid": Rule(maxBytes: 7, syntax: .number(max: maxPID), what: "a process ID"),
        "command": Rule(maxBytes: Limits.commandBytes, syntax: .text, what: "a command line"),
        "reason": Rule(maxBytes: Limits.reasonBytes, syntax: .text, what: "a reason"),
        "comment": Rule(maxBytes: Limits.commentBytes, syntax: .text, what: "a comment"),
        "ticket": Rule(maxBytes: Limits.ticketBytes, syntax: .text, what: "a ticket reference"),
        "why": Rule(maxBytes: 128, syntax: .text, what: "a short reason"),
        "kind": Rule(maxBytes: 32, syntax: .ascii(wordChars), what: "a word"),
        "scope": Rule(maxBytes: 32, syntax: .ascii(wordChars), what: "a word"),
        "otp": Rule(maxBytes: 16, syntax: .ascii("0123456789"), what: "a code of digits"),
        "archive": Rule(maxBytes: 4096, syntax: .text, what: "a path"),
        // What the module reads inside sudo (SudoUse): the invoking user's PATH, sudo's mode and SUDO_COMMAND.
        "path": Rule(maxBytes: 4096, syntax: .text, what: "a PATH"),
        "sudo_mode": Rule(maxBytes: 16, syntax: .ascii(wordChars), what: "run, none or unsure"),
        "stage": Rule(maxBytes: 16, syntax: .ascii(wordChars), what: "account or auth"),
        "sudo_command": Rule(maxBytes: Limits.commandBytes, syntax: .text, what: "a command line"),
    ]
    /// Whole numbers (IDs, seconds, flags): bounded here; each operation says what a bad one means.
    static let numbers: Set<String> = ["id", "request", "grant", "session", "before", "after", "for", "timeout", "file",
                                       "mine", "pending", "active", "break_glass", "cancel_on_close"]
    public static let defaultMaxBytes = 256

    public static func rule(for key: String) -> Rule {
        if let r = rules[key] { return r }
        if numbers.contains(key) { return Rule(maxBytes: 20, syntax: .text, what: "a whole number") }
        return Rule(maxBytes: defaultMaxBytes, syntax: .text, what: "text")
    }

    /// Whether the agent refuses a scalar in any field: control characters (C0, DEL, C1) and the whole Unicode
    /// format category (zero-width and bidirectional marks: U+200B, U+200E, U+202E, U+061C, ...).
    public static func isRefused(_ u: Unicode.Scalar) -> Bool {
        switch u.properties.generalCategory {
        case .control, .format: return true
        default: return false
        }
    }

    /// Whether a scalar must never reach a terminal, a log line or a notification as itself: what the agent
    /// refuses, and the line and paragraph separators (U+2028, U+2029), which the agent accepts in text and
    /// every output turns into a space or '?'.
    public static func isUnsafe(_ u: Unicode.Scalar) -> Bool {
        switch u.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator: return true
        default: return false
        }
    }

    /// Checks one value; nil when it is fine, else the sentence that says what is wrong.
    public static func problem(_ key: String, _ value: String) -> String? {
        let r = rule(for: key)
        let n = value.utf8.count
        if n > r.maxBytes { return "the field '\(key)' is \(n) bytes; the limit is \(r.maxBytes)" }
        switch r.syntax {
        case .text:
            if value.unicodeScalars.contains(where: isRefused) {
                return "the field '\(key)' contains control or invisible formatting characters; write \(r.what) on one line in plain text"
            }
        case .name:
            if value.unicodeScalars.contains(where: { isRefused($0) || $0.properties.isWhitespace }) {
                return "the field '\(key)' must be \(r.what): no spaces, control or formatting characters"
            }
        case .number(let max):
            guard !value.isEmpty, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int64(value), v <= max else {
                return "the field '\(key)' must be \(r.what): digits only" + (max < Int64.max ? ", at most \(max)" : "")
            }
        case .ascii(let allowed):
            let ok = Set(allowed.utf8)
            if !value.utf8.allSatisfy(ok.contains) { return "the field '\(key)' must be \(r.what)" }
        }
        return nil
    }

    /// Checks every field of a request; the first bad one is a `bad-request` error naming it.
    public static func validate(_ m: Message) throws(WireError) {
        for (k, v) in m.fields {
            if let p = problem(k, v) { throw WireError(.badRequest, p) }
        }
    }

    /// Fields that describe the event the PAM module reports (who connected from where, on which terminal,
    /// through which service and process, to run what as whom). Only the module knows them, so only a root
    /// peer may send them: from anyone else they are claims, and jitd refuses them (issue 13, finding 1).
    /// A new field of this kind is added here, and `check` and the session operations accept it only from root.
    public static let moduleContext: [String] = ["service", "rhost", "tty", "pid", "command", "runas",
                                                 "path", "sudo_mode", "unsure", "stage", "sudo_command"]
}
