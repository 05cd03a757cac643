import Foundation
public import JITCore

/// `/etc/jit/fleet.yaml`: what `jitd enrol` learnt and where it put the host's key and certificates.
///
/// A file of its own, written by `jitd enrol` (and rewritten on renewal), never by hand: jit.yaml stays the
/// admin's own text. The agent acts on it when jit.yaml has `server:` (fleet mode; `server.fleet` names it).
public struct FleetFile: Equatable, Sendable {
    public static let defaultPath = "/etc/jit/fleet.yaml"
    public static let defaultDirectory = "/var/lib/jit/fleet"

    public var server: String
    public var name: String
    public var environment: String
    public var labels: [String]
    public var key: String
    public var certificate: String
    public var ca: String

    public init(server: String, name: String, environment: String, labels: [String], key: String, certificate: String, ca: String) {
        self.server = server
        self.name = name
        self.environment = environment
        self.labels = labels
        self.key = key
        self.certificate = certificate
        self.ca = ca
    }

    /// The paths `jitd enrol --dir DIR` uses.
    public static func paths(dir: String) -> (key: String, certificate: String, ca: String) {
        (dir + "/host.key", dir + "/host.pem", dir + "/ca.pem")
    }

    public var text: String {
        func q(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "''") + "'" }
        return """
            # Written by 'jitd enrol'; do not edit (enrol again, or 'jitd enrol --renew').
            # jitd uses it when jit.yaml has 'server:' (see jit.yaml(5), SERVER).
            server: \(q(server))
            name: \(q(name))
            environment: \(q(environment))
            labels: [\(labels.map(q).joined(separator: ", "))]
            key: \(q(key))
            certificate: \(q(certificate))
            ca: \(q(ca))

            """
    }

    /// Reads and checks a fleet file; refuses one that others may write (it names the key and CA to use).
    public static func load(path: String) throws(ConfigError) -> FleetFile {
        do { try SecureFiles.checkNotWritableByOthers(path, what: "the fleet file") } catch {
            throw ConfigError(file: path, line: nil, field: "", message: error.message + " (or run 'jitd enrol' first)")
        }
        let text: String
        do { text = try SecureFiles.read(path, what: "the fleet file") } catch {
            throw ConfigError(file: path, line: nil, field: "", message: error.message)
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> FleetFile {
        guard let root = try YAMLReader.compose(text, file: file) else {
            throw ConfigError(file: file, line: 1, field: "", message: "the file is empty; run 'jitd enrol' again")
        }
        let r = YAMLReader(file: file)
        let m = try r.mapping(root, path: "")
        let keys = ["server", "name", "environment", "labels", "key", "certificate", "ca"]
        try r.onlyKeys(m, keys, path: "")
        for k in keys where m[k] == nil {
            throw ConfigError(file: file, line: root.mark?.line, field: k, message: "is missing; run 'jitd enrol' again")
        }
        let server = try r.string(m["server"]!.1, path: "server")
        guard server.hasPrefix("https://") else { throw r.error(m["server"]!.1, "server", "must be an https:// URL") }
        let name = try r.string(m["name"]!.1, path: "name")
        guard HostIdentity.isValidHostName(name) else { throw r.error(m["name"]!.1, "name", "'\(name)' is not a valid host name") }
        return FleetFile(
            server: server, name: name,
            environment: try r.name(m["environment"]!.1, path: "environment"),
            labels: try r.names(m["labels"]!.1, path: "labels", nonEmpty: false),
            key: try r.absolutePath(m["key"]!.1, path: "key"),
            certificate: try r.absolutePath(m["certificate"]!.1, path: "certificate"),
            ca: try r.absolutePath(m["ca"]!.1, path: "ca"))
    }
}
