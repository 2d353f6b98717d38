"""What a sweep looks like from outside: live frames for `hsm monitor`, failure analysis
grouped by cause, and the performance and HTML error reports written at the end of every
sweep. Everything here only reads the store and the task folders."""
