import ArgumentParser
import Foundation
import JITAgent
import JITCore

/// `jitd revoke-all`: ends every active grant as revoked, in the store. The package's prerm runs it on
/// removal (with the agent stopped), so the audit trail says why the grants ended; the maintainer script
/// removes the sudoers files itself. It never creates a database that is not there.
struct RevokeAll: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke-all",
        abstract: "Record every active grant as revoked (the package runs this when it is removed).",
        discussion: "Changes only the database; stop the agent first and remove jit-grant-* sudoers files afterwards.")

    @Option(help: "The config file (read for 'database').") var config: String = Config.defaultPath
    @Option(help: "Database path (overrides 'database'; the config is then not read).") var database: String?
    @Option(help: "Who or what revoked them, as recorded.") var by: String = "package removal"

    func run() throws {
        let path: String
        if let database {
            path = database
        } else {
            do { path = try Config.load(path: config).database } catch {
                FileHandleErr.write("jitd: \(error.description); pass --database to name the database directly\n")
                throw ExitCode(1)
            }
        }
        guard FileManager.default.fileExists(atPath: path) else {
            print("jitd: no database at \(path): no grants to revoke")
            return
        }
        do {
            let store = try Store(path: path)
            let now = Date()
            var ids: [String] = []
            for grant in try store.activeGrants() {
                _ = try store.endGrant(id: grant.id, as: .revoked, by: by, at: now)
                ids.append(String(grant.id))
            }
            print("jitd: revoked \(ids.count) active grant(s)" + (ids.isEmpty ? "" : ": " + ids.joined(separator: ", ")))
        } catch {
            FileHandleErr.write("jitd: \(error.message)\n")
            throw ExitCode(1)
        }
    }
}
