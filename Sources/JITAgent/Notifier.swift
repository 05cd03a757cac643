public import JITCore

/// Something approvers should hear about. Delivering it (mail, chat, pager) is a later issue: the engine
/// logs every event itself and hands it to a `Notifier`, the seam where delivery plugs in.
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
