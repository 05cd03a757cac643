import JITDaemon

Jitd.runMain()
