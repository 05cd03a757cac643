import Foundation
import Hummingbird
import JITCore
import JITFleet
import NIOCore
import ServiceLifecycle
import Synchronization

/// The host-facing routes of slice 2 (docs/FLEET.md, "The wire and the tables of slice 2"): requests filed by
/// hosts, the grant stream, host events. All are behind `HostAuthMiddleware`; the caller is `context.caller()`.
extension FleetAPI {
    /// Reads a JSON body of at most `limit` bytes.
    static func body<T: Decodable>(_ type: T.Type, _ request: Request, limit: Int) async throws -> T {
        var request = request
        let buffer: ByteBuffer
        do { buffer = try await request.collectBody(upTo: limit) } catch is NIOTooManyBytesError {
            throw APIError(.contentTooLarge, "too_large", "the request body is larger than \(limit / 1024) KiB; send less at once")
        }
        do { return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView)) } catch {
            throw APIError(.badRequest, "bad_request", "the request body is not the JSON this call takes: \(Self.describe(error))")
        }
    }

    /// Names the field a decoding error is about.
    static func describe(_ error: any Error) -> String {
        guard let d = error as? DecodingError else { return "it cannot be read" }
        func path(_ c: [any CodingKey]) -> String { c.isEmpty ? "the top level" : c.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") }
        switch d {
        case .keyNotFound(let k, let c): return "\(path(c.codingPath + [k])) is missing"
        case .typeMismatch(_, let c), .valueNotFound(_, let c): return "\(path(c.codingPath)) has the wrong type"
        case .dataCorrupted(let c): return c.codingPath.isEmpty ? "it is not JSON" : "\(path(c.codingPath)) cannot be read"
        @unknown default: return "it cannot be read"
        }
    }

    func addHostRoutes(to hosts: RouterGroup<FleetContext>) {
        hosts.get("grants/stream") { request, context in
            let h = try context.caller()
            let q = try StreamQuery(cursor: request.uri.queryParameters["cursor"].map(String.init), wait: request.uri.queryParameters["wait"].map(String.init))
            let answer = try await stream.stream(h, cursor: q.cursor, wait: q.wait)
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: answer.body))
        }
        // The same changes as server-sent events on one open response (docs/FLEET.md, "The grant stream").
        hosts.get("grants/events") { request, context in
            let h = try context.caller()
            // An EventSource reconnecting sends the last event's id (its cursor) as Last-Event-ID.
            let raw = request.uri.queryParameters["cursor"].map(String.init) ?? request.headers[.init("Last-Event-ID")!]
            let q = try StreamQuery(cursor: raw, wait: nil)
            let sub = try await stream.subscribe(h, cursor: q.cursor)
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store"], body: ResponseBody { [stream] writer in
                do {
                    // At shutdown the stream ends (the host goes to another replica) rather than hold the server up.
                    try await withGracefulShutdownHandler {
                        try await writer.write(contentsOf: sub.first)
                        for await e in sub.events { try await writer.write(e) }
                    } onGracefulShutdown: {
                        sub.continuation.finish()
                    }
                } catch {
                    await stream.unsubscribe(sub.name, id: sub.id)
                    throw error
                }
                await stream.unsubscribe(sub.name, id: sub.id)
                try await writer.finish(nil)
            })
        }
        hosts.post("events") { request, context in
            let h = try context.caller()
            let batch = try await Self.body(FleetWire.EventBatch.self, request, limit: HostBodies.eventBodyLimit)
            let events = try HostBodies.check(batch)
            return try Self.json(FleetWire.EventAck(acked: try await db.storeEvents(host: h.record.name, events)))
        }
        hosts.post("requests") { request, context in
            let h = try context.caller()
            let body = try await Self.body(FleetWire.HostRequest.self, request, limit: HostBodies.requestBodyLimit)
            let (status, code) = try await Self.file(body, from: h, with: filing)
            return try Self.json(status, status: code)
        }
        hosts.get("requests/:id") { _, context in
            let h = try context.caller()
            return try Self.json(try await Self.status(context.parameters.get("id"), for: h, with: filing))
        }
        hosts.post("requests/:id/cancel") { _, context in
            let h = try context.caller()
            return try Self.json(try await Self.cancel(context.parameters.get("id"), for: h, with: filing))
        }
    }

    /// `POST /v1/requests` once the body is read: 201 for a new request, 200 for the same `(caller, seq)` again.
    static func file(_ body: FleetWire.HostRequest, from caller: CallerHost, with filing: (any HostFiling)?) async throws -> (FleetWire.RequestStatus, HTTPResponse.Status) {
        guard body.seq > 0 else { throw APIError(.badRequest, "bad_request", "seq must be > 0 (the host's outbox sequence number)") }
        try HostBodies.check(body)
        let (status, created) = try await engine(filing).fileReportingReplay(body, from: caller)
        return (status, created ? .created : .ok)
    }

    /// `GET /v1/requests/{id}`: the engine answers only for requests the caller filed.
    static func status(_ raw: String?, for caller: CallerHost, with filing: (any HostFiling)?) async throws -> FleetWire.RequestStatus {
        guard let raw, let id = Int64(raw), id > 0 else {
            throw APIError(.notFound, "not_found", "there is no such request: the id is a whole number > 0")
        }
        return try await engine(filing).status(id: id, for: caller)
    }

    /// `POST /v1/requests/{id}/cancel`: the engine cancels only requests the caller filed, and only pending ones.
    static func cancel(_ raw: String?, for caller: CallerHost, with filing: (any HostFiling)?) async throws -> FleetWire.RequestStatus {
        guard let raw, let id = Int64(raw), id > 0 else {
            throw APIError(.notFound, "not_found", "there is no such request: the id is a whole number > 0")
        }
        return try await engine(filing).cancel(id: id, for: caller)
    }

    static func engine(_ filing: (any HostFiling)?) throws -> any HostFiling {
        guard let filing else {
            throw APIError(.serviceUnavailable, "not_available", "this control plane was built without a decision engine, so it cannot take requests from hosts")
        }
        return filing
    }
}

extension FleetDatabase {
    /// How often the hosts seen are written to `last_seen` (`StreamListener` does it).
    static let seenEvery: Duration = .seconds(5)

    /// Marks a host seen, at most once a minute (the row's `last_seen`): queued, and written with the others
    /// of the round by `flushSeen`, never on the call's path (10,000 hosts re-arming their streams after one
    /// approval would otherwise be 10,000 UPDATEs in the middle of the fan-out).
    func touch(_ host: HostRecord) {
        if let seen = host.lastSeen, Date().timeIntervalSince(seen) < 60 { return }
        seenQueue.add(host.name)
    }

    /// Writes the queued hosts' `last_seen` (a failure is only logged; they are queued again when next seen).
    func flushSeen() async {
        let names = seenQueue.take()
        guard !names.isEmpty else { return }
        do {
            try await client.query("UPDATE hosts SET last_seen = now() WHERE name = ANY(\(names)) AND (last_seen IS NULL OR last_seen < now() - interval '1 minute')", logger: logger)
            let now = Date()
            for n in names { hostCache.seen(n, at: now) }
        } catch {
            logger.warning("cannot mark \(names.count) host(s) seen: \(failure(error, doing: "marking hosts seen").message)")
        }
    }
}

/// The hosts seen since the last `flushSeen` (bounded: past the bound, the rest wait for the next round).
final class SeenQueue: Sendable {
    private let names = Mutex<Set<String>>([])
    static let bound = 100_000

    func add(_ name: String) {
        names.withLock { if $0.count < Self.bound { $0.insert(name) } }
    }

    func take() -> [String] {
        names.withLock { s in
            defer { s.removeAll(keepingCapacity: true) }
            return Array(s)
        }
    }
}
