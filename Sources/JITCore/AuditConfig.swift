import Foundation
import Yams

/// Where the audit trail goes besides the database, and how long it stays there.
public struct AuditSettings: Equatable, Sendable {
    /// Send every event to syslog as RFC 5424 with structured data.
    public var syslog = true
    /// The syslog socket (a Unix datagram socket).
    public var syslogSocket = "/dev/log"
    /// How often the chain's head hash is written to syslog (an outside copy to check a rewrite against).
    public var headInterval: Int64 = 600
    /// Events older than this are archived to a compressed, still-verifiable file; nil keeps them forever.
    public var retention: Int64? = nil
    /// Where archives go (default: an `audit` folder next to the database).
    public var archiveDir: String? = nil
    /// The epoch length of forward-secure sealing, fixed into the key by `jit audit setup-keys`.
    public var sealInterval: Int64 = 900
    /// The sealing key file (default: `seal.key` next to the database). Holds only the current epoch's key.
    public var sealKey: String? = nil
    public init() {}
}

extension Config {
    static func parseAudit(_ node: Node, r: YAMLReader) throws(ConfigError) -> AuditSettings {
        var a = AuditSettings()
        let m = try r.mapping(node, path: "audit")
        try r.onlyKeys(m, ["syslog", "syslog_socket", "head_interval", "retention", "archive_dir", "seal_interval", "seal_key"], path: "audit")
        for (key, (_, v)) in m {
            let path = "audit.\(key)"
            switch key {
            case "syslog": a.syslog = try r.bool(v, path: path)
            case "syslog_socket": a.syslogSocket = try r.absolutePath(v, path: path)
            case "head_interval": a.headInterval = try r.duration(v, path: path, ceiling: 86_400)
            case "retention":
                let d = try r.duration(v, path: path, ceiling: 10 * 365 * 86_400)
                guard d >= 86_400 else { throw r.error(v, path, "must be at least 1d; the trail is evidence") }
                a.retention = d
            case "archive_dir": a.archiveDir = try r.absolutePath(v, path: path)
            case "seal_interval": a.sealInterval = try r.duration(v, path: path, ceiling: 86_400)
            case "seal_key": a.sealKey = try r.absolutePath(v, path: path)
            default: break
            }
        }
        return a
    }
}
