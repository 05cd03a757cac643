import ArgumentParser
import Foundation
import JITCore
import JITFleet
#if canImport(Glibc)
import Glibc
#endif

/// `jit login`: proves an SSH key to the control plane (the server's nonce, signed by `ssh-keygen -Y sign -n jit`
/// with the key in ssh-agent, as git signs commits) and keeps the bearer token it answers with.
struct Login: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Log in to a control plane with your SSH key (through ssh-agent); later jit commands go there.",
        discussion: """
            The key must be registered for you on the server ('jitd server key add USER KEY', or its allowed_signers file). \
            The token is kept in ~/.config/jit/login.json (mode 0600, folder 0700) until it expires (12 h by default) or 'jit logout'.
            """)
    @Option(help: "The control plane's URL, e.g. https://jit.example.org:8443 (default: $JIT_SERVER).") var server: String?
    @Option(help: "Who you are on the control plane (default: your user name here).") var user: String?
    @Option(help: "Your key: a .pub file whose private half is in ssh-agent, or a private key file (default: the first ed25519/ECDSA key in ssh-agent).")
    var key: String?
    @Option(help: "The CA that issued the server's certificate (default: the system's trust store).") var ca: String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        if let user, !Names.isValid(user) { throw ArgumentParser.ValidationError("--user '\(user)' is not a user name") }
    }

    func run() throws {
        guard let url = server ?? ProcessInfo.processInfo.environment["JIT_SERVER"].flatMap({ $0.isEmpty ? nil : $0 }) else {
            throw CLIError(code: 2, message: "give the control plane's URL: jit login --server https://jit.example.org:8443")
        }
        let who = user ?? getpwuid(getuid()).flatMap { $0.pointee.pw_name.map { String(cString: $0) } } ?? ""
        var caPEM: String? = nil
        if let ca { do { caPEM = try SecureFiles.read(ca, what: "the CA (--ca)") } catch { throw CLIError(code: 2, message: error.message) } }
        let client: PeopleClient
        do { client = try PeopleClient(server: url, caPEM: caPEM) } catch { throw CLIError(code: 2, message: error.message) }
        let signer = try Signer(key: key)
        defer { signer.cleanUp() }
        let answer: FleetWire.LoginAnswer
        do {
            let challenge = try blocking { () async throws(FleetError) in try await client.challenge(user: who) }
            // The text names the server as this client reached it (TLS-verified), never as the server says.
            let text = FleetWire.loginMessage(server: client.server, user: who, nonce: challenge.nonce)
            let signature = try signer.sign(text)
            answer = try blocking { () async throws(FleetError) in try await client.login(FleetWire.LoginRequest(user: who, nonce: challenge.nonce, signature: signature)) }
        } catch {
            throw Remote.cliError(error, server: client.server)
        }
        try LoginFile(server: client.server, user: who, token: answer.token, key: answer.key, expiresAt: answer.expiresAt, ca: caPEM).save()
        if json {
            print(Output.json(["server": client.server, "user": who, "key": answer.key, "expires_at": answer.expiresAt]))
        } else {
            print("logged in to \(client.server) as \(who) with key \(answer.key) until \(answer.expiresAt); jit commands now go there (jit logout ends it)")
        }
    }
}

struct Logout: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "End your login to the control plane (the server forgets the token; the file is removed).")

    func run() throws {
        guard let f = try LoginFile.load() else { print("not logged in."); return }
        defer { LoginFile.remove() }
        do {
            let c = try PeopleClient(server: f.server, caPEM: f.ca)
            let token = f.token
            try blocking { () async throws(FleetError) in try await c.logout(token: token) }
            print("logged out of \(f.server).")
        } catch where error.code == "token_expired" || error.code == "token_revoked" || error.code == "token_unknown" {
            print("logged out of \(f.server) (the login had already ended).")
        } catch {
            throw CLIError(code: error.code == "unreachable" ? 4 : 1, message: "the local login is removed, but \(f.server) did not confirm the logout: \(error.message)")
        }
    }
}

/// Signs with `ssh-keygen -Y sign -n jit` (the private key stays in ssh-agent or its file).
struct Signer {
    /// What `-f` names: a public key (ssh-keygen then asks ssh-agent) or a private key file.
    let keyFile: String
    let tempDir: String?

    init(key: String?) throws(CLIError) {
        if let key {
            guard FileManager.default.fileExists(atPath: key) else { throw CLIError(code: 2, message: "--key \(key): no such file") }
            if !key.hasSuffix(".pub"), FileManager.default.fileExists(atPath: key + ".pub") {
                keyFile = key + ".pub"
            } else {
                keyFile = key
            }
            tempDir = nil
            return
        }
        let listed = try Self.run(["/usr/bin/ssh-add", "-L"], input: nil)
        guard listed.status == 0 else {
            throw CLIError(code: 5, message: "ssh-agent has no keys or cannot be reached (\(listed.err.isEmpty ? "ssh-add -L failed" : listed.err)); start it and ssh-add your key, or give --key")
        }
        guard let line = listed.out.split(separator: "\n").first(where: { l in ["ssh-ed25519 ", "ecdsa-sha2-nistp256 "].contains { l.hasPrefix($0) } }) else {
            throw CLIError(code: 5, message: "ssh-agent holds no ssh-ed25519 or ecdsa-sha2-nistp256 key; ssh-add one, or give --key")
        }
        var template = Array((NSTemporaryDirectory() + "/jit-login-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { b -> String? in mkdtemp(b.baseAddress!).map { String(cString: $0) } }
        guard let dir = made else {
            throw CLIError(code: 1, message: "cannot make a temporary folder for the public key")
        }
        tempDir = dir
        keyFile = dir + "/key.pub"
        do { try SecureFiles.write(String(line) + "\n", to: keyFile, mode: 0o600) } catch { throw CLIError(code: 1, message: error.message) }
    }

    func cleanUp() {
        guard let tempDir else { return }
        unlink(keyFile)
        rmdir(tempDir)
    }

    func sign(_ text: String) throws(FleetError) -> String {
        let r: (status: Int32, out: String, err: String)
        do { r = try Self.run(["/usr/bin/ssh-keygen", "-Y", "sign", "-n", FleetWire.loginNamespace, "-f", keyFile], input: Data(text.utf8)) } catch {
            throw FleetError("key_sign", error.message)
        }
        guard r.status == 0, r.out.contains("BEGIN SSH SIGNATURE") else {
            throw FleetError("key_sign", "ssh-keygen -Y sign with \(keyFile) failed: \(r.err.trimmingCharacters(in: .whitespacesAndNewlines)); is the key in ssh-agent (ssh-add -l)?")
        }
        return r.out
    }

    static func run(_ argv: [String], input: Data?) throws(CLIError) -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = inp
        do { try p.run() } catch { throw CLIError(code: 1, message: "cannot run \(argv[0]): \(error.localizedDescription); install openssh-client") }
        if let input { inp.fileHandleForWriting.write(input) }
        try? inp.fileHandleForWriting.close()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }
}
