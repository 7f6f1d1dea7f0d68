"""
The only modules of the agent that use Twisted's private names.

Twisted's public API does not offer what these need (a write that leaves
at once, a UNIX client without the per-read `recvmsg` wrapper, a poll loop
without a log context per event, a connection pool that does not log every
connection, the address an endpoint will bind, a log publisher's
observers), so they reach inside.
Keeping them here, and every private name they use listed in
`PRIVATE_NAMES`, makes an upgrade's risk one folder, and
`tests/_twisted/test_canary.py` fails naming the attribute when a Twisted
release removes or renames one. setup.cfg pins the Twisted release line
they are tested with.
"""

#: Every private name of Twisted the modules here use: (the object that
#: has it, as a dotted path, and the name). An attribute may be set on the
#: instances only; the canary test then looks for it in the class's code.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    # eager_write: the TCP transport's write state.
    ("twisted.internet.tcp.Connection", "_tempDataLen"),
    ("twisted.internet.tcp.Connection", "_writeDisconnecting"),
    ("twisted.internet.tcp.Connection", "_writeDisconnected"),
    ("twisted.internet.tcp.Connection", "_closeWriteConnection"),
    # docker_socket: the UNIX client and endpoint.
    ("twisted.internet.unix.Connector", "_makeTransport"),
    ("twisted.internet.unix.Client", "_connectDone"),
    ("twisted.internet.endpoints.UNIXClientEndpoint", "_path"),
    ("twisted.internet.endpoints.UNIXClientEndpoint", "_timeout"),
    ("twisted.internet.endpoints.UNIXClientEndpoint", "_checkPID"),
    # http_pool: the HTTP client's connection factory.
    ("twisted.web.client", "_HTTP11ClientFactory"),
    ("twisted.web.client.HTTPConnectionPool", "_factory"),
    # endpoints: what a TCP server endpoint will bind.
    ("twisted.internet.endpoints.TCP4ServerEndpoint", "_interface"),
    ("twisted.internet.endpoints.TCP4ServerEndpoint", "_port"),
    ("twisted.internet.endpoints.TCP4ServerEndpoint", "_backlog"),
    # plain_dispatch: the epoll reactor's poll loop.
    ("twisted.internet.epollreactor.EPollReactor", "_poller"),
    ("twisted.internet.epollreactor.EPollReactor", "_selectables"),
    ("twisted.internet.epollreactor.EPollReactor", "_doReadOrWrite"),
    # log_observers: a publisher's observers, a file observer's file.
    ("twisted.logger.LogPublisher", "_observers"),
    ("twisted.logger.FileLogObserver", "_outFile"),
)
