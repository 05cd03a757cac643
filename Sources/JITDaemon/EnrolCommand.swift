import ArgumentParser
import Foundation
import JITCore
import JITFleet

/// `jitd enrol`: joins this host to a fleet, renews its certificate, or asks the server who it is.
struct Enrol: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enrol",
        abstract: "Enrol this host with a fleet control plane (a one-time join token), or renew its certificate.",
        discussion: """
            Makes a P-256 key on this host (it never leaves it; mode 0600 under --dir), verifies the server by the CA \
            fingerprint the token carries, and writes the host certificate, the CA and --fleet-config. The environment \
            and labels are the token's, never this host's. Fleet mode is in progress: the agent does not use them yet.
            """)

    @Option(help: "The control plane, e.g. https://jit.example.org:8443.") var server: String?
    @Option(help: "The join token ('jitd server token create'). Or --token-file, or $JIT_JOIN_TOKEN.") var token: String?
    @Option(name: .customLong("token-file"), help: "Read the token from this file ('-' for stdin): not visible in ps.") var tokenFile: String?
    @Option(help: "This host's name (default: the kernel's host name; a token made with --host decides).") var name: String?
    @Option(help: "Where the key and certificates go (root-only).") var dir: String = FleetFile.defaultDirectory
    @Option(name: .customLong("fleet-config"), help: "The fleet file to write (and, with --renew or --whoami, read).") var fleetConfig: String = FleetFile.defaultPath
    @Flag(help: "Renew the host certificate now (same identity).") var renew = false
    @Flag(name: .customLong("new-key"), help: "With --renew: make a new key too.") var newKey = false
    @Option(name: .customLong("if-expiring-within"), help: "With --renew: only if the certificate ends within this long (e.g. 10d); for a timer.") var ifExpiringWithin: String?
    @Flag(help: "Print who the control plane says this host is (JSON).") var whoami = false

    func validate() throws {
        if renew || whoami {
            guard server == nil, token == nil, tokenFile == nil, name == nil else {
                throw ArgumentParser.ValidationError("--renew and --whoami read the server and name from --fleet-config; drop --server, --token and --name")
            }
            guard !(renew && whoami) else { throw ArgumentParser.ValidationError("give --renew or --whoami, not both") }
        } else {
            guard server != nil else { throw ArgumentParser.ValidationError("--server is required to enrol, e.g. --server https://jit.example.org:8443") }
            guard newKey == false, ifExpiringWithin == nil else { throw ArgumentParser.ValidationError("--new-key and --if-expiring-within go with --renew") }
        }
        if let d = ifExpiringWithin {
            do { _ = try Durations.parse(d) } catch { throw ArgumentParser.ValidationError("--if-expiring-within: \(error.message)") }
        }
    }

    func readToken() throws(FleetError) -> String {
        if let token { return token }
        if let tokenFile {
            if tokenFile == "-" {
                guard let line = readLine() else { throw FleetError("usage", "no token on standard input") }
                return line
            }
            return try SecureFiles.read(tokenFile, what: "the token file")
        }
        if let t = ProcessInfo.processInfo.environment["JIT_JOIN_TOKEN"], !t.isEmpty { return t }
        throw FleetError("usage", "no join token: give --token, --token-file or $JIT_JOIN_TOKEN (from 'jitd server token create' on the control plane)")
    }

    func run() async throws {
        do {
            if renew || whoami {
                let fleet = try FleetFile.load(path: fleetConfig)
                let client = try FleetClient(server: fleet.server)
                if whoami {
                    let me = try await client.whoami(fleet: fleet)
                    let enc = JSONEncoder()
                    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                    print(String(decoding: try enc.encode(me), as: UTF8.self))
                    return
                }
                if let w = ifExpiringWithin {
                    let left = try FleetClient.notAfter(fleet: fleet).timeIntervalSinceNow
                    if left > TimeInterval(try Durations.parse(w)) {
                        print("jitd: the host certificate is good for \(Durations.format(Int64(left))) more; not renewed")
                        return
                    }
                }
                let f = try await client.renew(fleet: fleet, fleetPath: fleetConfig, newKey: newKey)
                print("jitd: renewed the certificate of \(f.name) (\(f.environment)) until \(Timestamps.format(try FleetClient.notAfter(fleet: f)))\(newKey ? " with a new key" : "")")
                return
            }
            let client = try FleetClient(server: server!)
            let f = try await client.enrol(token: try readToken(), name: name, dir: dir, fleetPath: fleetConfig)
            print("jitd: enrolled \(f.name) in \(f.environment)\(f.labels.isEmpty ? "" : " with labels \(f.labels.joined(separator: ","))") at \(f.server); wrote \(fleetConfig)")
        } catch let e as ExitCode {
            throw e
        } catch {
            throw fleetFailure(error)
        }
    }
}

/// Prints a fleet error as one sentence and exits 1.
func fleetFailure(_ e: any Error) -> ExitCode {
    let text = (e as? FleetError)?.message ?? (e as? ConfigError)?.description ?? "\(e)"
    FileHandleErr.write("jitd: \(text)\n")
    return ExitCode(1)
}
