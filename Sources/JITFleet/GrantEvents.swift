/// The grant stream as server-sent events: `GET /v1/grants/events?cursor=N` (docs/FLEET.md, "The grant stream").
///
/// One response stays open; each batch of changes is one event, its data a `FleetWire.GrantStream` in JSON on
/// one line and its id the batch's cursor:
///
///     id: 42
///     event: grants
///     data: {"changes":[...],"cursor":42,"reset":false}
///
/// The first event answers at once (a reset for cursor 0, else the changes after the cursor, maybe none). When
/// nothing else is sent for `GrantEvents.pingEvery`, the server sends a comment line (`: ping`), so that a host
/// whose link died notices within `GrantEvents.idleLimit` and connects again from its stored cursor. The server
/// ends the response after a few minutes, when the host's row changes (revoked, renewed) and at shutdown; the
/// host connects again. Nothing is lost by a cut: the host stores the cursor of what it has applied.
public enum GrantEvents {
    public static let path = "/v1/grants/events"
    /// The longest the server stays silent on an open stream.
    public static let pingEvery: Duration = .seconds(15)
    /// A host that has read nothing for this long drops the stream and connects again.
    public static let idleLimit: Duration = .seconds(45)
    /// The largest event either side takes (a reset of 10,000 grants is a few MB).
    public static let maxEvent = 32 << 20
    public static let ping: [UInt8] = Array(": ping\n\n".utf8)

    /// One batch as an event.
    public static func event(json: some Collection<UInt8>, cursor: Int64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(json.count + 40)
        out.append(contentsOf: "id: \(cursor)\nevent: grants\ndata: ".utf8)
        out.append(contentsOf: json)
        out.append(contentsOf: "\n\n".utf8)
        return out
    }
}

/// Reads a `text/event-stream` body as it arrives (the WHATWG "server-sent events" format): lines end in LF,
/// CR LF or CR; `field: value` (one space after the colon dropped); `data` lines joined with LF; a blank line
/// ends an event; a line starting with ':' is a comment. Bounded: a line or an event over `limit` bytes is an
/// error, never a buffer that grows without end.
public struct EventStreamParser: Sendable {
    public enum Item: Sendable, Equatable {
        case event(name: String, id: String?, data: String)
        case comment
    }

    let limit: Int
    private var line: [UInt8] = []
    private var data: [UInt8] = []
    private var hasData = false
    private var name = ""
    private var id: String?
    private var afterCR = false

    public init(limit: Int = GrantEvents.maxEvent) { self.limit = limit }

    /// Feeds bytes; returns the items they complete, in order.
    public mutating func feed(_ bytes: some Sequence<UInt8>) throws(FleetError) -> [Item] {
        var out: [Item] = []
        for b in bytes {
            if afterCR {
                afterCR = false
                if b == 0x0A { continue }  // CR LF: one line end
            }
            switch b {
            case 0x0A: try endLine(&out)
            case 0x0D:
                afterCR = true
                try endLine(&out)
            default:
                guard line.count < limit else { throw FleetError("bad_answer", "the control plane sent a grant-stream line of more than \(limit >> 20) MiB") }
                line.append(b)
            }
        }
        return out
    }

    private mutating func endLine(_ out: inout [Item]) throws(FleetError) {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty {
            if hasData { out.append(.event(name: name.isEmpty ? "message" : name, id: id, data: String(decoding: data, as: UTF8.self))) }
            data.removeAll(keepingCapacity: false)
            hasData = false
            name = ""
            return
        }
        if line[0] == UInt8(ascii: ":") {
            out.append(.comment)
            return
        }
        let colon = line.firstIndex(of: UInt8(ascii: ":"))
        let field = String(decoding: line[..<(colon ?? line.endIndex)], as: UTF8.self)
        var value = colon.map { line[line.index(after: $0)...] } ?? line[line.endIndex...]
        if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
        switch field {
        case "data":
            guard data.count + value.count < limit else { throw FleetError("bad_answer", "the control plane sent a grant-stream event of more than \(limit >> 20) MiB") }
            if hasData { data.append(0x0A) }
            data.append(contentsOf: value)
            hasData = true
        case "event": name = String(decoding: value, as: UTF8.self)
        case "id": if !value.contains(0) { id = String(decoding: value, as: UTF8.self) }
        default: break  // "retry" and unknown fields: ignored, as the format says
        }
    }
}

/// What a host reads from the event stream.
public enum GrantStreamItem: Sendable, Equatable {
    /// A batch of changes, as the long-poll answers it.
    case batch(FleetWire.GrantStream)
    /// The server's keep-alive: the link and the server are there.
    case ping
}

/// How an event stream ended without an error.
public enum GrantEventsEnd: Sendable, Equatable {
    /// The server ended the response (after its time, a change of the host's row, shutdown): connect again.
    case ended
    /// The server has no event stream (an older `jitd server`: 404): long-poll instead.
    case unsupported
    /// The session was replaced (the certificate was renewed): connect again on the new one.
    case retired
}
