import Foundation
import JITCore
import JITFleet
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What `jit login` keeps: the server, who logged in, the bearer token and the CA it was verified against,
/// in `~/.config/jit/login.json` (folder 0700, file 0600; a folder others may read is refused).
struct LoginFile: Codable {
    var server: String
    var user: String
    var token: String
    var key: String
    var expiresAt: String
    /// The CA PEM given with --ca at login (nil: the system's trust store).
    var ca: String?
    enum CodingKeys: String, CodingKey {
        case server, user, token, key, ca
        case expiresAt = "expires_at"
    }

    /// The caller's own folder, from the password database (not $HOME: the file's owner must be the caller).
    static var folder: String {
        let home = getpwuid(getuid()).flatMap { $0.pointee.pw_dir.map { String(cString: $0) } } ?? (ProcessInfo.processInfo.environment["HOME"] ?? "/")
        return home + "/.config/jit"
    }
    static var path: String { folder + "/login.json" }

    /// The folder, made 0700 if missing; refused when it is not the caller's or others may read or write it.
    static func privateFolder(create: Bool) throws(CLIError) -> String {
        let dir = folder
        var st = stat()
        if stat(dir, &st) != 0 {
            guard create else { return dir }
            do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
                throw CLIError(code: 1, message: "cannot create \(dir): \(error.localizedDescription)")
            }
            guard stat(dir, &st) == 0 else { throw CLIError(code: 1, message: "cannot create \(dir)") }
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == getuid() else {
            throw CLIError(code: 1, message: "\(dir) is not a folder of yours (uid \(getuid())); move it away")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw CLIError(code: 1, message: "\(dir) may be read by others (mode \(String(st.st_mode & 0o777, radix: 8))); it holds your login: chmod 700 \(dir)")
        }
        return dir
    }

    /// The saved login, if any; a file others may read, or not the caller's, is refused.
    static func load() throws(CLIError) -> LoginFile? {
        let dir = try privateFolder(create: false)
        let p = dir + "/login.json"
        var st = stat()
        guard stat(p, &st) == 0 else { return nil }
        guard st.st_uid == getuid(), st.st_mode & 0o077 == 0 else {
            throw CLIError(code: 1, message: "\(p) is not yours or may be read by others (mode \(String(st.st_mode & 0o777, radix: 8))); remove it and log in again")
        }
        guard let d = FileManager.default.contents(atPath: p), let f = try? JSONDecoder().decode(LoginFile.self, from: d) else {
            throw CLIError(code: 1, message: "\(p) cannot be read; remove it and log in again with jit login")
        }
        return f
    }

    func save() throws(CLIError) {
        let dir = try Self.privateFolder(create: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let d = try? enc.encode(self) else { throw CLIError(code: 1, message: "cannot encode the login") }
        do { try SecureFiles.write(String(decoding: d, as: UTF8.self) + "\n", to: dir + "/login.json", mode: 0o600) } catch {
            throw CLIError(code: 1, message: error.message)
        }
    }

    static func remove() { unlink(path) }
}

/// Where a `jit` command goes: `--server`, then `JIT_SERVER`, then the login's server; an explicit `--socket`
/// or `JIT_SOCKET` beats a saved login (not `--server`); else the local agent's socket.
enum Target {
    case socket(String)
    case server(Remote)
}

/// One control plane and the bearer token to call it with (a login's, or `JIT_TOKEN`).
struct Remote {
    let client: PeopleClient
    let token: String

    static func resolve(server flag: String?, ca caFlag: String?, socket: String?) throws(CLIError) -> Remote? {
        let env = ProcessInfo.processInfo.environment
        let explicit = flag ?? env["JIT_SERVER"].flatMap { $0.isEmpty ? nil : $0 }
        let apiToken = env["JIT_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        let login: LoginFile?
        if explicit == nil && apiToken == nil && socket != nil { return nil }
        login = try LoginFile.load()
        guard let url = explicit ?? login?.server else {
            if apiToken != nil { throw CLIError(code: 2, message: "JIT_TOKEN is set but no server is: give --server URL or set JIT_SERVER") }
            return nil
        }
        let norm = url.hasSuffix("/") ? String(url.dropLast()) : url
        let caPath = caFlag ?? env["JIT_CA"].flatMap { $0.isEmpty ? nil : $0 }
        var caPEM: String? = nil
        if let caPath {
            do { caPEM = try SecureFiles.read(caPath, what: "the CA (--ca)") } catch { throw CLIError(code: 2, message: error.message) }
        } else if let login, login.server == norm {
            caPEM = login.ca
        }
        let token: String
        if let apiToken {
            token = apiToken
        } else if let login, login.server == norm {
            token = login.token
        } else {
            throw CLIError(code: 5, message: "you are not logged in to \(norm): run jit login --server \(norm)\(login.map { " (your login is for \($0.server))" } ?? "")")
        }
        do { return Remote(client: try PeopleClient(server: norm, caPEM: caPEM), token: token) } catch {
            throw CLIError(code: 2, message: error.message)
        }
    }

    func call(_ m: Message, timeout: Double) throws(CLIError) -> Message {
        let client = self.client, token = self.token
        do { return try blocking { () async throws(FleetError) in try await client.call(m, token: token, timeout: timeout) } } catch {
            throw Remote.cliError(error, server: client.server)
        }
    }

    /// The documented exit codes for what the server said.
    static func cliError(_ e: FleetError, server: String) -> CLIError {
        switch e.code {
        case "unreachable": return CLIError(code: 4, message: e.message)
        case "unauthorized", "login_required", "user_unknown", "root_refused", "rate_limited": return CLIError(code: 5, message: e.message)
        case let c where c.hasPrefix("token_") || c.hasPrefix("nonce_") || c.hasPrefix("key_"): return CLIError(code: 5, message: e.message)
        case "not-found": return CLIError(code: 6, message: e.message)
        default: return CLIError(code: 1, message: e.message)
        }
    }
}

/// Runs async client code from the synchronous command tree (the main thread is not Swift concurrency's).
func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws(FleetError) -> T) throws(FleetError) -> T {
    let box = Outcome<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        let r: Result<T, FleetError>
        do throws(FleetError) { r = .success(try await body()) } catch { r = .failure(error) }
        box.value.withLock { $0 = r }
        done.signal()
    }
    done.wait()
    return try box.value.withLock { $0! }.get()
}

final class Outcome<T: Sendable>: Sendable {
    let value = Mutex<Result<T, FleetError>?>(nil)
}

/// While `jit request --wait` waits on a control plane: SIGINT (Ctrl-C) or SIGTERM cancels the request it filed
/// (the server's `cancel`, bounded to 10 s), says so on stderr, then ends the process by that same signal, as
/// a local `jit` ends (there jitd cancels when the waiting client's socket closes). If the cancel fails, the
/// sentence says so and how to cancel by hand. `stop()` puts the default handlers back.
final class CancelOnInterrupt: @unchecked Sendable {
    // Touched only in init and stop(), on the thread that waits; the handlers run on a dispatch queue.
    private var sources: [any DispatchSourceSignal] = []
    static let signals: [Int32] = [SIGINT, SIGTERM]

    init(request id: Int64, remote: Remote) {
        for sig in Self.signals {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler {
                let text: String
                do {
                    _ = try remote.call(Message("cancel", [("request", String(id))]), timeout: 10)
                    text = "jit: interrupted: request \(id) cancelled."
                } catch {
                    let why = (error as? CLIError)?.message ?? "\(error)"
                    text = "jit: interrupted, but cancelling request \(id) at \(remote.client.server) failed (\(why)); cancel it with: jit cancel \(id)"
                }
                printErr(text)
                // End by the signal itself (exit status 128+N in a shell), as a local jit does.
                signal(sig, SIG_DFL)
                kill(getpid(), sig)
                usleep(500_000)
                Glibc.exit(128 + sig)
            }
            src.resume()
            sources.append(src)
        }
    }

    func stop() {
        for s in sources { s.cancel() }
        sources = []
        for sig in Self.signals { signal(sig, SIG_DFL) }
    }
}
