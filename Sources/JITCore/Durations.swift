public import Foundation

/// Durations as people type them: `90s`, `30m`, `1h30m`, `2d`. Whole seconds, always positive.
public enum Durations {
    /// Parses `1h30m`-style text. Refuses zero, negatives, fractions, unknown units and overflow.
    public static func parse(_ text: String) throws(ValidationError) -> Int64 {
        let s = text.trimmingCharacters(in: .whitespaces)
        guard !s.isEmpty else { throw ValidationError("a duration is empty; write it like 90s, 30m or 1h30m") }
        if s.hasPrefix("-") {
            throw ValidationError("the duration '\(text)' is negative; write a positive one like 30m or 1h")
        }
        var total: Int64 = 0
        var number: Int64? = nil
        var seenUnits = Set<Character>()
        for c in s {
            if let d = c.wholeNumberValue, c.isASCII {
                let (m, o1) = (number ?? 0).multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(Int64(d))
                guard !o1, !o2, a < 10_000_000_000 else {
                    throw ValidationError("the duration '\(text)' is too long")
                }
                number = a
                continue
            }
            let unit: Int64
            switch c {
            case "s": unit = 1
            case "m": unit = 60
            case "h": unit = 3600
            case "d": unit = 86_400
            default:
                throw ValidationError("the duration '\(text)' has '\(c)'; use whole numbers with s, m, h or d, like 1h30m")
            }
            guard let n = number else {
                throw ValidationError("the duration '\(text)' has a unit without a number; write it like 1h30m")
            }
            guard !seenUnits.contains(c) else {
                throw ValidationError("the duration '\(text)' repeats the unit '\(c)'")
            }
            seenUnits.insert(c)
            let (p, o1) = n.multipliedReportingOverflow(by: unit)
            let (t, o2) = total.addingReportingOverflow(p)
            guard !o1, !o2, t <= 366 * 86_400 * 10 else { throw ValidationError("the duration '\(text)' is too long") }
            total = t
            number = nil
        }
        if number != nil {
            throw ValidationError("the duration '\(text)' has no unit at the end; write 90s, 30m or 1h, not a bare number")
        }
        guard total > 0 else { throw ValidationError("the duration '\(text)' is zero; ask for at least 1s") }
        return total
    }

    /// Formats seconds the way `parse` reads them: 5400 → `1h30m`.
    public static func format(_ seconds: Int64) -> String {
        guard seconds > 0 else { return "0s" }
        var s = seconds
        var out = ""
        let d = s / 86_400; s %= 86_400
        let h = s / 3600; s %= 3600
        let m = s / 60; s %= 60
        if d > 0 { out += "\(d)d" }
        if h > 0 { out += "\(h)h" }
        if m > 0 { out += "\(m)m" }
        if s > 0 { out += "\(s)s" }
        return out
    }
}

/// A refusal of well-formed but unacceptable input, with a sentence that says what to do.
public struct ValidationError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Time as the agent sees it: injected, so expiry is tested without sleeping.
public protocol JITClock: Sendable {
    func now() -> Date
}

public struct SystemClock: JITClock {
    public init() {}
    public func now() -> Date { Date() }
}

/// RFC 3339 in UTC with a `Z`, to the second: the only time format users and the wire see.
public enum Timestamps {
    public static func format(_ date: Date) -> String {
        let t = time_t(date.timeIntervalSince1970.rounded(.down))
        var tmv = tm()
        var tt = t
        gmtime_r(&tt, &tmv)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02dZ", Int(tmv.tm_year) + 1900, Int(tmv.tm_mon) + 1, Int(tmv.tm_mday),
            Int(tmv.tm_hour), Int(tmv.tm_min), Int(tmv.tm_sec))
    }

    /// Reads `YYYY-MM-DDTHH:MM:SSZ` (and `+00:00`); other offsets are converted.
    public static func parse(_ s: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        if let d = f.date(from: s) { return d }
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.date(from: s)
    }

    /// Milliseconds since the epoch: how the store keeps time.
    public static func millis(_ d: Date) -> Int64 { Int64((d.timeIntervalSince1970 * 1000).rounded(.down)) }
    public static func date(millis: Int64) -> Date { Date(timeIntervalSince1970: Double(millis) / 1000) }
}
