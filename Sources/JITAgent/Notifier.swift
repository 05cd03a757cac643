public import JITCore

/// Something approvers should hear about. The engine logs every event itself and hands it to a `Notifier`
/// (an in-process hook; tests record them). Delivery to people does not go through here: it is derived from
/// the audit trail, durably, by the outbox (`Outbox.swift`, `Notifications.swift`), so that a notification
/// is stored in the same transaction as the change it is about.
public enum PolicyEvent: Sendable {
    /// A request waits for these groups.
    case filed(AccessRequest, approverGroups: [String])
    /// Nobody decided in time: the next tier (numbered from 1 for the first) may now decide.
    case escalated(AccessRequest, tier: Int, approverGroups: [String])
    /// A rule approved the request by itself.
    case autoApproved(AccessRequest, Grant)
    /// A break-glass bypass: every approver is to be told.
    case breakGlass(AccessRequest, Grant, approverGroups: [String])
}

/// Delivers policy events to people.
public protocol Notifier: Sendable {
    func notify(_ event: PolicyEvent)
}

/// The default until delivery exists: the engine's own log lines are the record.
public struct NoNotifier: Notifier {
    public init() {}
    public func notify(_ event: PolicyEvent) {}
}
