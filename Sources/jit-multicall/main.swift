// One binary with two names, to keep the package small: the Swift runtime, Foundation and the libraries
// are linked once. Installed as /usr/sbin/jitd and /usr/bin/jit (a symbolic link to it); the name it was
// started under picks the command tree.
import JITCLI
import JITDaemon

let name = CommandLine.arguments.first.map { $0.split(separator: "/").last.map(String.init) ?? $0 } ?? ""
if name == "jitd" {
    Jitd.runMain()
} else {
    JIT.runMain()
}
