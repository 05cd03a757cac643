import Foundation

/// The `JIT/1` wire protocol (docs/PROTOCOL.md): a 4-byte big-endian length, then lines of text.
/// Small on purpose, so that the C PAM module speaks it without a JSON library.
public enum Wire {
    public static let version = 1
    public static let maxFrame = 65_536
    public static let maxKeyLength = 32
}

/// A protocol error: what was wrong with a frame, in a sentence.
public struct WireError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

/// Error codes carried in `code=` of an error reply.
public enum ErrorCode: String, Sendable, Codable {
    case badRequest = "bad-request"
    case version
    case tooLarge = "too-large"
    case unauthorized
    case notFound = "not-found"
    case invalid
    case conflict
    case busy
    case `internal`
}

/// One frame: a header word (operation, `ok` or `error`), its fields, and list records.
public struct Message: Equatable, Sendable {
    public var word: String
    public var fields: [(String, String)]
    public var records: [[(String, String)]]

    public init(_ word: String, _ fields: [(String, String)] = [], records: [[(String, String)]] = []) {
        self.word = word
        self.fields = fields
        self.records = records
    }

    public static func == (a: Message, b: Message) -> Bool {
        a.word == b.word && a.fields.elementsEqual(b.fields, by: ==)
            && a.records.count == b.records.count
            && zip(a.records, b.records).allSatisfy { $0.elementsEqual($1, by: ==) }
    }

    /// The first value of `key`, if any.
    public subscript(key: String) -> String? {
        fields.first { $0.0 == key }?.1
    }

    /// Every value of a repeatable key, in order.
    public func all(_ key: String) -> [String] {
        fields.filter { $0.0 == key }.map(\.1)
    }

    public mutating func add(_ key: String, _ value: String) {
        fields.append((key, value))
    }

    public static func error(_ code: ErrorCode, _ message: String) -> Message {
        Message("error", [("code", code.rawValue), ("message", message)])
    }

    public var isOK: Bool { word == "ok" }

    /// The body (without the length prefix).
    public func encodeBody() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        out.append(contentsOf: Array("JIT/\(Wire.version) \(word)\n".utf8))
        func put(_ pairs: [(String, String)]) {
            for (k, v) in pairs {
                out.append(contentsOf: Array(k.utf8))
                out.append(UInt8(ascii: "="))
                Message.percentEncode(v, into: &out)
                out.append(10)
            }
        }
        put(fields)
        for r in records {
            out.append(UInt8(ascii: "."))
            out.append(10)
            put(r)
        }
        return out
    }

    /// The whole frame, length prefix included.
    public func encodeFrame() throws(WireError) -> [UInt8] {
        let body = encodeBody()
        guard body.count <= Wire.maxFrame else {
            throw WireError(.tooLarge, "the message is \(body.count) bytes; the limit is \(Wire.maxFrame)")
        }
        let n = UInt32(body.count)
        return [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + body
    }

    /// `%XX` for `%`, control bytes and DEL; everything else as itself (docs/PROTOCOL.md).
    public static func percentEncode(_ s: String, into out: inout [UInt8]) {
        let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
        for b in s.utf8 {
            if b == UInt8(ascii: "%") || b < 0x20 || b == 0x7f {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xf)])
            } else {
                out.append(b)
            }
        }
    }

    public static func percentDecode(_ bytes: ArraySlice<UInt8>) throws(WireError) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = bytes.startIndex
        func hexval(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            default: return nil
            }
        }
        while i < bytes.endIndex {
            let b = bytes[i]
            if b == UInt8(ascii: "%") {
                guard i + 2 < bytes.endIndex,
                    let h = hexval(bytes[i + 1]), let l = hexval(bytes[i + 2])
                else { throw WireError(.badRequest, "a value has a '%' that is not followed by two hex digits") }
                out.append(h << 4 | l)
                i += 3
            } else {
                if b < 0x20 || b == 0x7f {
                    throw WireError(.badRequest, "a value holds a raw control byte; encode it as %XX")
                }
                out.append(b)
                i += 1
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else {
            throw WireError(.badRequest, "a value is not valid UTF-8")
        }
        return s
    }

    /// Parses a body. Strict: a bad header, key or encoding is an error, never skipped.
    public static func decode(body: [UInt8]) throws(WireError) -> Message {
        guard !body.isEmpty else { throw WireError(.badRequest, "the message is empty") }
        guard body.count <= Wire.maxFrame else {
            throw WireError(.tooLarge, "the message is \(body.count) bytes; the limit is \(Wire.maxFrame)")
        }
        guard body.last == 10 else { throw WireError(.badRequest, "the message does not end with a newline") }
        let lines = body.dropLast().split(separator: 10, omittingEmptySubsequences: false)
        guard let head = lines.first, let space = head.firstIndex(of: UInt8(ascii: " ")) else {
            throw WireError(.badRequest, "the first line must be 'JIT/1 WORD'")
        }
        let proto = head[head.startIndex..<space]
        guard proto.starts(with: Array("JIT/".utf8)) else {
            throw WireError(.badRequest, "the first line must start with 'JIT/1 '")
        }
        guard Array(proto) == Array("JIT/\(Wire.version)".utf8) else {
            throw WireError(.version, "unsupported protocol version; this agent speaks JIT/\(Wire.version)")
        }
        let wordBytes = head[head.index(after: space)...]
        guard !wordBytes.isEmpty, wordBytes.count <= 32,
            wordBytes.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || $0 == UInt8(ascii: "_") })
        else { throw WireError(.badRequest, "the operation name on the first line is not valid") }
        var msg = Message(String(decoding: wordBytes, as: UTF8.self))
        var current: [(String, String)]? = nil
        for line in lines.dropFirst() {
            if line.count == 1 && line.first == UInt8(ascii: ".") {
                if let c = current { msg.records.append(c) }
                current = []
                continue
            }
            guard let eq = line.firstIndex(of: UInt8(ascii: "=")) else {
                throw WireError(.badRequest, "a line is not 'key=value'")
            }
            let key = line[line.startIndex..<eq]
            guard !key.isEmpty, key.count <= Wire.maxKeyLength,
                let first = key.first, first >= 0x61 && first <= 0x7a,
                key.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "_") })
            else { throw WireError(.badRequest, "a key is not of the form [a-z][a-z0-9_]* (32 bytes at most)") }
            let value = try percentDecode(line[line.index(after: eq)...])
            let pair = (String(decoding: key, as: UTF8.self), value)
            if current != nil { current!.append(pair) } else { msg.fields.append(pair) }
        }
        if let c = current { msg.records.append(c) }
        return msg
    }

    /// Reads the 4-byte length prefix.
    public static func frameLength(_ prefix: [UInt8]) throws(WireError) -> Int {
        precondition(prefix.count == 4)
        let n = Int(prefix[0]) << 24 | Int(prefix[1]) << 16 | Int(prefix[2]) << 8 | Int(prefix[3])
        guard n > 0 else { throw WireError(.badRequest, "a frame of length 0 is not allowed") }
        guard n <= Wire.maxFrame else {
            throw WireError(.tooLarge, "the message is \(n) bytes; the limit is \(Wire.maxFrame)")
        }
        return n
    }
}

extension Message {
    /// Field lookup helpers that turn a missing or malformed field into a clear error.
    public func require(_ key: String) throws(WireError) -> String {
        guard let v = self[key] else { throw WireError(.badRequest, "the field '\(key)' is missing") }
        return v
    }

    public func int(_ key: String) throws(WireError) -> Int64? {
        guard let v = self[key] else { return nil }
        guard let n = Int64(v) else { throw WireError(.badRequest, "the field '\(key)' must be a whole number") }
        return n
    }

    public func bool(_ key: String) throws(WireError) -> Bool {
        switch self[key] {
        case nil, "0": return false
        case "1": return true
        default: throw WireError(.badRequest, "the field '\(key)' must be 0 or 1")
        }
    }

    /// Refuses any key not in `allowed`: unknown fields are an error, not ignored.
    public func onlyKeys(_ allowed: Set<String>) throws(WireError) {
        for (k, _) in fields where !allowed.contains(k) {
            throw WireError(.badRequest, "the field '\(k)' is not known for '\(word)'")
        }
        guard records.isEmpty else { throw WireError(.badRequest, "a request may not carry records") }
    }
}
