public import JITCore

extension Engine {
    /// One call of a person through the control plane's API (`POST /v1/call`): the same `handle` the socket
    /// uses, plus `wait` answered at once (the decision, or `decision=pending`; the API holds and asks again).
    public func remoteCall(_ m: Message, from c: Identity) -> Message {
        guard m.word == "wait" else { return handle(m, from: c) }
        do {
            try m.onlyKeys(["request"])
            guard let id = try m.int("request"), id > 0 else { return .error(.badRequest, "the field 'request' must be a request ID") }
            switch try waitState(id: id, caller: c) {
            case .decided(let reply): return reply
            case .pending(let r): return Engine.stillPending(r)
            }
        } catch let e as WireError {
            return .error(e.code, e.message)
        } catch let e as JITError {
            return .error(e.code, e.message)
        } catch {
            return .error(.internal, "\(error)")
        }
    }

    /// The answer to a wait that ends before the decision.
    static func stillPending(_ r: AccessRequest) -> Message {
        Message("ok", [("decision", "pending"), ("request", String(r.id)), ("state", "pending"),
                       ("expires_at", Timestamps.format(r.expiresAt)),
                       ("message", "request \(r.id) is still waiting for approval; an approver runs: jit approve \(r.id)")])
    }
}
