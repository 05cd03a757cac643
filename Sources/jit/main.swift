import JITCLI

JIT.runMain()
