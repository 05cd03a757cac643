import JITDaemon

Jitd.main()
