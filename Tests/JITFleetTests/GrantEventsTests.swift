import Foundation
import JITFleet
import Testing

@Suite struct EventStreamParserTests {
    func parse(_ text: String, chunk: Int = .max, limit: Int = 1 << 20) throws -> [EventStreamParser.Item] {
        var p = EventStreamParser(limit: limit)
        let bytes = Array(text.utf8)
        var out: [EventStreamParser.Item] = []
        var i = 0
        while i < bytes.count {
            let end = min(bytes.count, i + chunk)
            out += try p.feed(bytes[i..<end])
            i = end
        }
        return out
    }

    @Test func eventsCommentsAndLineEndsWhateverTheChunks() throws {
        let text = ": ping\n\nid: 4\nevent: grants\ndata: {\"a\":1}\n\nevent: grants\r\ndata:two\r\ndata: lines\r\n\r\nid: 9\rdata: cr\r\r"
        let want: [EventStreamParser.Item] = [
            .comment,
            .event(name: "grants", id: "4", data: "{\"a\":1}"),
            .event(name: "grants", id: "4", data: "two\nlines"),  // the id carries over, as the format says
            .event(name: "message", id: "9", data: "cr"),
        ]
        for chunk in [1, 2, 3, 7, 1000] {
            #expect(try parse(text, chunk: chunk) == want, "chunks of \(chunk) bytes")
        }
    }

    @Test func anEventIsDispatchedOnlyAtItsBlankLineAndFieldsWithoutDataAreNotEvents() throws {
        #expect(try parse("event: grants\ndata: x\n").isEmpty, "no blank line yet")
        #expect(try parse("event: grants\nretry: 10\nunknown: y\n\n").isEmpty)
        #expect(try parse("data\n\n") == [.event(name: "message", id: nil, data: "")])
    }

    @Test func aLineOrAnEventPastTheLimitIsRefused() {
        #expect(throws: FleetError.self) { try parse("data: " + String(repeating: "x", count: 200) + "\n\n", limit: 100) }
        #expect(throws: FleetError.self) { try parse(String(repeating: "data: xxxxxxxxxx\n", count: 20) + "\n", limit: 100) }
        #expect(throws: FleetError.self) { try parse(String(repeating: "y", count: 101), limit: 100) }
    }

    @Test func whatTheServerWritesIsWhatTheHostReads() throws {
        let batch = FleetWire.GrantStream(cursor: 42, reset: false, changes: [])
        let json = try JSONEncoder().encode(batch)
        let bytes = GrantEvents.event(json: json, cursor: 42) + GrantEvents.ping
        var p = EventStreamParser()
        let items = try p.feed(bytes)
        #expect(items.count == 2 && items[1] == .comment)
        guard case .event(let name, let id, let data) = items[0] else { Issue.record("not an event: \(items)"); return }
        #expect(name == "grants" && id == "42")
        #expect(try JSONDecoder().decode(FleetWire.GrantStream.self, from: Data(data.utf8)) == batch)
    }
}
