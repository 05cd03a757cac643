import ArgumentParser
import Foundation
import JITCore
import JITFleet

/// `jit web`: asks the control plane of your `jit login` for a one-time sign-in link to its web approval page
/// and opens it in your browser (xdg-open), or prints it.
struct Web: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open the control plane's web approval page, signed in (a one-time link, valid 60 s).",
        discussion: "Needs 'jit login' (an API token does not open the web page). Without a browser opener (xdg-open), or with --print, the link is printed.")
    @Flag(name: .customLong("print"), help: "Print the link instead of opening it.") var printOnly = false

    func run() throws {
        guard let f = try LoginFile.load() else {
            throw CLIError(code: 2, message: "not logged in: run 'jit login --server URL' first (the web page opens for a login, not for an API token)")
        }
        let link: FleetWire.WebLink
        do {
            let c = try PeopleClient(server: f.server, caPEM: f.ca)
            link = try blocking { () throws(FleetError) in try await c.webLink(token: f.token) }
        } catch {
            throw Remote.cliError(error, server: f.server)
        }
        if !printOnly, let opener = Self.opener() {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: opener)
            p.arguments = [link.url]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            if (try? p.run()) != nil {
                p.waitUntilExit()
                if p.terminationStatus == 0 {
                    print("opened the web page of \(f.server) in your browser; the link works once, until \(link.expiresAt)")
                    return
                }
            }
        }
        print(link.url)
    }

    /// xdg-open on PATH, when there is a display to open it on.
    static func opener() -> String? {
        let env = ProcessInfo.processInfo.environment
        guard env["DISPLAY"]?.isEmpty == false || env["WAYLAND_DISPLAY"]?.isEmpty == false else { return nil }
        for dir in (env["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/xdg-open"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }
}
