import Foundation
import Yams

/// `server:` in jit.yaml: this host is one of a fleet. The control plane's URL, the host key, certificate
/// and fleet CA come from the fleet file `jitd enrol` wrote; jit.yaml says only where it is and how to
/// behave when the server is away. Without `server:` the agent is a single host, as before.
public struct FleetSettings: Equatable, Sendable {
    public enum Offline: String, Equatable, Sendable {
        /// Keep honouring cached grants until their `expires_at` (default).
        case bestEffort = "best_effort"
        /// Refuse everything but break-glass once the server has not been heard from for `offline_grace`.
        case strict
    }

    public var fleet: String = "/etc/jit/fleet.yaml"
    public var offline: Offline = .bestEffort
    public var offlineGrace: Int64 = 900
    public var line: Int? = nil
    public init() {}
}

extension Config {
    static func parseServer(_ node: Node, r: YAMLReader) throws(ConfigError) -> FleetSettings {
        var s = FleetSettings()
        s.line = node.mark?.line
        let m = try r.mapping(node, path: "server")
        try r.onlyKeys(m, ["fleet", "offline", "offline_grace"], path: "server")
        for (key, (_, v)) in m {
            let path = "server.\(key)"
            switch key {
            case "fleet": s.fleet = try r.absolutePath(v, path: path)
            case "offline":
                let t = try r.string(v, path: path)
                guard let o = FleetSettings.Offline(rawValue: t) else {
                    throw r.error(v, path, "must be best_effort or strict, not '\(t)'")
                }
                s.offline = o
            case "offline_grace":
                s.offlineGrace = try r.duration(v, path: path, ceiling: Config.hardCeiling)
                // The stream's long-poll answers at least every 25 s: a shorter grace would flap.
                guard s.offlineGrace >= 60 else { throw r.error(v, path, "must be at least 1m (the grant stream answers at least every 25 s)") }
            default: break
            }
        }
        return s
    }
}
