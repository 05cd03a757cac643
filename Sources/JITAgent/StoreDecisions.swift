public import Foundation
public import JITCore

/// The decision operations of the one engine: what `Engine` needs to file, approve, deny, cancel, expire,
/// extend and list requests and grants, and to check approvers' one-time codes. Two implementations: the
/// SQLite `Store` (a single host, and the host agent) and the control plane's `PostgresStore`; one
/// conformance suite (Tests/JITFleetTests/DecisionStoreConformanceTests.swift) runs against both.
///
/// Every method is one transaction: it commits before it returns, or changes nothing and throws. The
/// closures given to `end` and `approveByRule` run inside that transaction on the row as it is now (locked
/// on PostgreSQL: `SELECT ... FOR UPDATE`), so two approvers, or two replicas, deciding the same request at
/// once make exactly one decision. The host's check path, sessions, uses and its own trail stay on `Store`.
public protocol DecisionStore: Sendable {
    /// Names the database in messages and in `status`.
    var describe: String { get }

    /// Stores a new pending request.
    func insertRequest(_ r: AccessRequest) throws(JITError) -> AccessRequest
    /// Stores a request approved as it is filed (automatic rule, break-glass) with its grant, in one transaction.
    func insertApproved(_ r: AccessRequest, via: ApprovedVia, by: String, at now: Date, noPassword: Bool, login: Bool,
                        end: (Grant?) -> Date) throws(JITError) -> Store.Decision
    /// Records one approval: `authorize` re-checks the approver on the request as it is now, `complete`
    /// returns the grant's end when the approvals decide it (nil: more are needed).
    func approveByRule(
        id: Int64, approver: String, groups: [String], mfa: Bool, comment: String?, at now: Date, noPassword: Bool, login: Bool,
        authorize: (AccessRequest) throws(JITError) -> Void,
        complete: (AccessRequest, [ApprovalRecord], Grant?) throws(JITError) -> Date?
    ) throws(JITError) -> Store.Decision
    /// Ends a pending request as denied, cancelled or expired.
    func end(id: Int64, as next: RequestState, by who: String?, comment: String?, at now: Date,
             authorize: (AccessRequest) throws(JITError) -> Void) throws(JITError) -> AccessRequest
    /// Expires pending requests whose time is up (each exactly once, however many replicas ask); returns them.
    func expirePending(now: Date) throws(JITError) -> [AccessRequest]
    /// Ends active grants whose time is up as expired (each exactly once); returns them as they are now.
    func expireDueGrants(now: Date) throws(JITError) -> [Grant]

    func request(id: Int64) throws(JITError) -> AccessRequest?
    /// Newest first; `user` nil: everyone's; `before` pages backwards; at most `limit` rows.
    func requests(user: String?, pendingOnly: Bool, before: Int64?, limit: Int) throws(JITError) -> [AccessRequest]
    func grant(id: Int64) throws(JITError) -> Grant?
    func grants(user: String?, activeOnly: Bool, before: Int64?, limit: Int) throws(JITError) -> [Grant]
    /// Every active grant, soonest end first.
    func activeGrants() throws(JITError) -> [Grant]
    /// Ends an active grant as expired or revoked.
    func endGrant(id: Int64, as next: GrantState, by who: String?, at now: Date) throws(JITError) -> Grant
    /// The next moment something is due: a pending request's or an active grant's end.
    func nextDeadline() throws(JITError) -> Date?
    func counts() throws(JITError) -> (pending: Int, active: Int)
    /// How many of `user`'s requests are pending: those filed through enrolled host `host`, or (nil) those the
    /// person filed (on a host's own agent, the control plane's socket or its API). A control plane counts per
    /// filing host so that one compromised host cannot use up a user's budget on every other host.
    func pendingCount(user: String, filedBy host: String?) throws(JITError) -> Int
    func approvalRecords(id: Int64) throws(JITError) -> [ApprovalRecord]

    /// Pending requests with how many approval tiers have been opened so far.
    func pendingWithEscalation() throws(JITError) -> [(request: AccessRequest, escalated: Int)]
    /// Records that `tiers` tiers are open; false when that was already recorded (by another replica).
    @discardableResult
    func markEscalated(id: Int64, tiers: Int) throws(JITError) -> Bool

    /// Refuses target hosts that are not enrolled, unrevoked hosts of `environment` (a single host's store,
    /// which knows no fleet, refuses any).
    func checkTargets(_ names: [String], environment: String) throws(JITError)

    func hasMFA(user: String) throws(JITError) -> Bool
    func enrollMFA(user: String, secret: [UInt8], at now: Date, replacing code: String?) throws(JITError)
    func resetMFA(user: String) throws(JITError) -> Bool
    /// Checks a TOTP code and uses it up (good once); counts wrong ones and locks out after five.
    func consumeOTP(user: String, code: String, at now: Date) throws(JITError)
}

extension DecisionStore {
    public func requests(user: String?, pendingOnly: Bool, before: Int64? = nil) throws(JITError) -> [AccessRequest] {
        try requests(user: user, pendingOnly: pendingOnly, before: before, limit: Store.pageSize + 1)
    }

    public func grants(user: String?, activeOnly: Bool, before: Int64? = nil) throws(JITError) -> [Grant] {
        try grants(user: user, activeOnly: activeOnly, before: before, limit: Store.pageSize + 1)
    }
}

extension Store: DecisionStore {
    public var describe: String { path }

    public func checkTargets(_ names: [String], environment: String) throws(JITError) {
        guard names.isEmpty else {
            throw JITError(.invalid, "--host names target hosts of a fleet; this agent's database knows no fleet, so leave --host out")
        }
    }

    /// Due grants ended in one transaction: one writer (jitd) owns this database, so "each exactly once" holds.
    public func expireDueGrants(now: Date) throws(JITError) -> [Grant] {
        let due = try dueGrants(now: now)
        var out: [Grant] = []
        for g in due {
            do { out.append(try endGrant(id: g.id, as: .expired, by: nil, at: now)) } catch where error.code == .conflict {
                continue
            }
        }
        return out
    }
}
