public import JITFleet

/// What the host-facing routes (`POST /v1/requests`, `GET /v1/requests/{id}`, `POST /v1/requests/{id}/cancel`) ask of the control plane's
/// decision engine. The caller is always the host the connection proved (`CallerHost`); `request.hosts` are
/// targets checked against the rule, never the filer.
///
/// Rules the implementation keeps (docs/FLEET.md, compromised hosts):
/// - idempotent on `(caller.record.name, request.seq)`: the same pair again returns the first answer;
/// - the environment is `caller.record.environment`; targets outside it are refused;
/// - a host's word alone never opens other hosts: under an automatic rule (no human approver), a request
///   filed by a host covers only the filing host;
/// - `status` answers only for requests the caller filed (else `not_found`, the same as a missing one).
public protocol HostFiling: Sendable {
    func file(_ request: FleetWire.HostRequest, from caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus
    func status(id: Int64, for caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus
    /// `file`, and whether this call filed it (`true`: 201) or replayed an earlier `(caller, seq)` (`false`: 200).
    /// The default says `true` always; an engine that knows replays implements it.
    func fileReportingReplay(_ request: FleetWire.HostRequest, from caller: CallerHost) async throws(FleetError) -> (FleetWire.RequestStatus, created: Bool)
    /// Cancels a pending request the caller filed (its user gave up on that host), as its user; a request
    /// already decided is left as it is and its status returned; another host's is `not_found`.
    func cancel(id: Int64, for caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus
}

extension HostFiling {
    public func cancel(id: Int64, for caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus {
        throw FleetError("not_available", "this control plane cannot cancel requests filed by hosts")
    }

    public func fileReportingReplay(_ request: FleetWire.HostRequest, from caller: CallerHost) async throws(FleetError) -> (FleetWire.RequestStatus, created: Bool) {
        (try await file(request, from: caller), true)
    }
}
