/// An error of the fleet: a stable code (the API's `error.code`) and one sentence a person can act on.
public struct FleetError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: String
    public var message: String
    public init(_ code: String, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}
