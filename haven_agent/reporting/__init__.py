"""
The reporter: every interval, and early on container changes, one report
of the host's metrics and Docker's state, POSTed to the Haven master.
"""
