public import ArgumentParser
import Foundation
import JITAgent
import JITCore
import Logging

/// `jitd`: the agent's command tree. A library, so that the `jitd` executable and the multi-call binary
/// the package ships (`jit-multicall`, installed as both `jit` and `jitd`) run the same commands.
public struct Jitd: ParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "jitd",
        abstract: "The jit-access agent: serves requests, approvals and grants on this host.",
        discussion: "Runs as root. See jitd(8), jit.yaml(5) and docs/PROTOCOL.md.",
        version: JITVersion.string,
        subcommands: [Run.self, CheckConfig.self, RevokeAll.self, ServerCommand.self, Enrol.self],
        defaultSubcommand: Run.self
    )

    /// Parses the command line and runs the command. The agent's commands run synchronously on the main
    /// thread, as before, so that no Swift concurrency thread exists when the agent blocks its signals for
    /// sigwait (one would otherwise take SIGHUP and die of it). The fleet's commands (`server`, `enrol`) are
    /// async: they run as a task while the main thread waits for it.
    public static func runMain() -> Never {
        ServerName.dropPrivilegesIfRoot()
        do {
            var command = try parseAsRoot(ServerName.arguments())
            guard let async = command as? any AsyncParsableCommand else {
                try command.run()
                exit()
            }
            nonisolated(unsafe) var task = async
            let outcome = AsyncOutcome()
            Task.detached {
                do { try await task.run() } catch { outcome.error = error }
                outcome.done.signal()
            }
            outcome.done.wait()
            exit(withError: outcome.error)
        } catch {
            exit(withError: error)
        }
    }
}

/// What the async command ended with; the semaphore orders the write before the read.
final class AsyncOutcome: @unchecked Sendable {
    var error: (any Error)?
    let done = DispatchSemaphore(value: 0)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the agent (the default).")

    @Option(help: "The config file.") var config: String = Config.defaultPath
    @Option(help: "Socket path (overrides 'socket' in the config).") var socket: String?
    @Option(help: "Database path (overrides 'database').") var database: String?
    @Option(name: .customLong("sudoers-dir"), help: "Sudoers folder (overrides 'sudoers_dir').") var sudoersDir: String?

    func run() throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "jitd")
        logger.logLevel = .info
        do {
            let agent = try Agent(configPath: config, overrides: Overrides(socket: socket, database: database, sudoersDir: sudoersDir), logger: logger) { config, logger, store in
                SudoersEffects(path: config.sudoersDir, logger: logger, ioLogRoot: config.sudoIODir) { kind, grant, data in
                    try? store.record(kind, actor: "jitd", user: "", grantID: grant, data: data, at: Date())
                }
            }
            throw ExitCode(try agent.run())
        } catch let e as JITError {
            FileHandleErr.write("jitd: \(e.message)\n")
            throw ExitCode(1)
        }
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Validate a config file; exit 1 and name the line and field of any error.")

    @Option(help: "The config file.") var config: String = Config.defaultPath

    func run() throws {
        do {
            let c = try Config.load(path: config)
            print(PolicyReport.summary(c, file: config))
            for w in PolicyReport.warnings(c, file: config, directory: SystemDirectory()) { FileHandleErr.write("jitd: \(w)\n") }
        } catch {
            FileHandleErr.write("jitd: \(error.description)\n")
            throw ExitCode(1)
        }
    }
}
