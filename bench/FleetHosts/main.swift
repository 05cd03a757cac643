// jit-bench-hosts: the simulated hosts of `make bench-fleet` (bench/fleet.py), a benchmark tool, not shipped.
//
// Holds one grant stream per host (mutual TLS with the host's own key and certificate) against the replicas
// named, as a host agent does: GET /v1/grants/events (server-sent events, one response held open; connected
// again from the cursor when the server ends it), or with BENCH_STREAM=poll the long-poll GET /v1/grants/stream,
// re-armed as soon as an answer is read. Compiled and on SwiftNIO so that the simulated hosts take little of the machine the replicas
// share: what the bench measures is the control plane's fan-out, not the load generator's.
//
// Usage: jit-bench-hosts CA.pem CERT-DIR NAMES-FILE PORT[,PORT...]
//   each name in NAMES-FILE (one a line) has CERT-DIR/NAME.pem (its key and certificate); host i streams from
//   PORT[i % count]. Prints on stdout, one a line:
//     ready N             N hosts have had their first answer (streaming)
//     seen ID STATE T     a host received grant ID in STATE at T (seconds since the epoch, wall clock)
//   and stops when stdin is closed.
import Foundation
import JITFleet
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

let args = CommandLine.arguments
guard args.count == 5, let ports = Optional(args[4].split(separator: ",").compactMap { Int($0) }), !ports.isEmpty else {
    FileHandle.standardError.write(Data("usage: jit-bench-hosts CA.pem CERT-DIR NAMES-FILE PORT[,PORT...]\n".utf8))
    exit(2)
}
let caPath = args[1], certDir = args[2]
let longPoll = ProcessInfo.processInfo.environment["BENCH_STREAM"] == "poll"
let names: [String]
do { names = try String(contentsOfFile: args[3], encoding: .utf8).split(separator: "\n").map(String.init) } catch {
    FileHandle.standardError.write(Data("jit-bench-hosts: cannot read \(args[3]): \(error)\n".utf8))
    exit(2)
}

/// Lines for stdout, written by one thread every 50 ms.
final class Output: Sendable {
    private let lines = Mutex<[String]>([])
    private let ready = Atomic<Int>(0)
    func seen(_ id: Int64, _ state: String, _ t: Double) { lines.withLock { $0.append("seen \(id) \(state) \(t)") } }
    func becameReady() { let n = ready.add(1, ordering: .relaxed).newValue; lines.withLock { $0.append("ready \(n)") } }
    func flush() {
        let out = lines.withLock { l -> [String] in defer { l.removeAll(keepingCapacity: true) }; return l }
        guard !out.isEmpty else { return }
        FileHandle.standardOutput.write(Data((out.joined(separator: "\n") + "\n").utf8))
    }
}
let output = Output()

/// One simulated host's stream on one connection: asks, reads the answer, asks again from its cursor.
final class StreamHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    var cursor: Int64 = 0
    var first = true
    var status = 0
    var body = ByteBuffer()
    var parser = EventStreamParser()
    let onFirst: @Sendable () -> Void

    init(onFirst: @escaping @Sendable () -> Void) { self.onFirst = onFirst }

    func channelActive(context: ChannelHandlerContext) { ask(context) }

    func ask(_ context: ChannelHandlerContext) {
        let wait = first ? 0 : 50
        let uri = longPoll ? "/v1/grants/stream?cursor=\(cursor)&wait=\(wait)" : GrantEvents.path + "?cursor=\(cursor)"
        parser = EventStreamParser()
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: uri)
        head.headers.add(name: "Host", value: "127.0.0.1")
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            status = Int(h.status.code)
            body.clear()
        case .body(var b):
            guard !longPoll, status == 200 else {
                body.writeBuffer(&b)
                return
            }
            guard let items = try? parser.feed(b.readableBytesView) else {
                context.close(promise: nil)
                return
            }
            let t = Date().timeIntervalSince1970
            for case .event(_, _, let data) in items {
                if let s = try? JSONDecoder().decode(FleetWire.GrantStream.self, from: Data(data.utf8)) { got(s, at: t) }
            }
        case .end:
            let t = Date().timeIntervalSince1970
            if !longPoll, status == 200 {
                ask(context)  // the server ended the event stream: connect again from the cursor
            } else if status == 200, let s = try? JSONDecoder().decode(FleetWire.GrantStream.self, from: Data(body.readableBytesView)) {
                got(s, at: t)
                ask(context)
            } else {
                // Refused or unreadable: ask again in a second, as a host agent would.
                context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(1)) { self.ask(context) }
            }
        }
    }

    func got(_ s: FleetWire.GrantStream, at t: Double) {
        cursor = s.cursor
        for g in s.changes { output.seen(g.id, g.state, t) }
        if first {
            first = false
            output.becameReady()
            onFirst()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
let connecting = DispatchSemaphore(value: 64)

func connect(_ index: Int, _ name: String) {
    let ctx: NIOSSLContext
    do {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .file(caPath)
        tls.certificateVerification = .noHostnameVerification
        let pem = certDir + "/" + name + ".pem"
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(pem).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: pem, format: .pem))
        ctx = try NIOSSLContext(configuration: tls)
    } catch {
        FileHandle.standardError.write(Data("jit-bench-hosts: \(name): \(error)\n".utf8))
        connecting.signal()
        return
    }
    let released = Atomic<Bool>(false)
    let release: @Sendable () -> Void = { if !released.exchange(true, ordering: .relaxed) { connecting.signal() } }
    @Sendable func attempt() {
        ClientBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: ctx, serverHostname: nil))
                    try ch.pipeline.syncOperations.addHTTPClientHandlers()
                    try ch.pipeline.syncOperations.addHandler(StreamHandler(onFirst: release))
                }
            }
            .connect(host: "127.0.0.1", port: ports[index % ports.count])
            .whenComplete { r in
                switch r {
                case .success(let ch):
                    // A stream that ends (a replica gone) is opened again, as a host agent does.
                    ch.closeFuture.whenComplete { _ in group.next().scheduleTask(in: .milliseconds(500)) { attempt() } }
                case .failure:
                    group.next().scheduleTask(in: .milliseconds(500)) { attempt() }
                }
            }
    }
    attempt()
}

Thread {
    while true {
        Thread.sleep(forTimeInterval: 0.05)
        output.flush()
    }
}.start()

for (i, n) in names.enumerated() {
    connecting.wait()
    connect(i, n)
}
// Runs until the bench closes stdin.
while let line = readLine(strippingNewline: true) { _ = line }
output.flush()
exit(0)
