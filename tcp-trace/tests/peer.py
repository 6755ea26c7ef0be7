"""Test peer for tcp-trace's integration tests.

halfclose HOST PORT: a server process (comm tt-server) and a client process (comm tt-client).
The client connects and shuts down its sending side; the server accepts and never closes.
Prints one line "ready SERVER_PID SERVER_FD CLIENT_PID CLIENT_FD CLIENT_PORT" and then waits:
SIGUSR1 makes that process close its socket; SIGTERM ends it.

closefirst WHO LISTEN CONNECT PORT: as halfclose, but WHO (server or client) closes its socket at
once, without a shutdown first (a server ending idle keep-alive connections, as nginx does), and
the other side never closes. LISTEN is the listener's address ("::" for a dual-stack listener
that IPv4 clients reach as v4-mapped addresses), CONNECT where the client connects.

leak N HOST PORT: the client opens N connections and closes them all; the server accepts them
and never closes one (a CLOSE_WAIT leak). The ready line's fds and port are the first
connection's.
"""
import ctypes, os, signal, socket, sys, time

libc = ctypes.CDLL(None)
PR_SET_NAME = 15


def name(n):
    libc.prctl(PR_SET_NAME, n.encode(), 0, 0, 0)


def wait_with(sock):
    def close(_sig, _frm):
        sock.close()
    signal.signal(signal.SIGUSR1, close)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(1)


def halfclose(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(fam)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        name("tt-client")
        listener.close()
        c = socket.create_connection((host, port))
        c.shutdown(socket.SHUT_WR)
        os.write(w, f"{c.fileno()} {c.getsockname()[1]}\n".encode())
        wait_with(c)
    name("tt-server")
    a, _ = listener.accept()
    listener.close()
    cfd, cport = os.read(r, 100).decode().split()
    print(f"ready {os.getpid()} {a.fileno()} {child} {cfd} {cport}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (os.kill(child, signal.SIGTERM), os._exit(0)))
    wait_with(a)


def listen(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(fam)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind((host, port))
    listener.listen(1024)
    return listener


def pair_of_processes(host, connect_host, port, n, client_does):
    """Forks a client that makes n connections and hands them to client_does; the server
    accepts them. Returns (client pid, accepted sockets, client's first fd and port)."""
    listener = listen(host, port)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        name("tt-client")
        listener.close()
        conns = [socket.create_connection((connect_host, port)) for _ in range(n)]
        os.write(w, f"{conns[0].fileno()} {conns[0].getsockname()[1]}\n".encode())
        client_does(conns)
    name("tt-server")
    accepted = [listener.accept()[0] for _ in range(n)]
    listener.close()
    cfd, cport = os.read(r, 100).decode().split()
    return child, accepted, cfd, cport


def hold(socks):
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(1)


def closefirst(who, host, connect_host, port):
    client_does = (lambda c: (c[0].close(), hold(c))) if who == "client" else hold
    child, accepted, cfd, cport = pair_of_processes(host, connect_host, port, 1, client_does)
    fd = accepted[0].fileno()
    if who == "server":
        accepted[0].close()
    print(f"ready {os.getpid()} {fd} {child} {cfd} {cport}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (os.kill(child, signal.SIGTERM), os._exit(0)))
    hold(accepted)


def leak(n, host, port):
    def close_all(conns):
        for c in conns:
            c.close()
        hold(conns)
    child, accepted, cfd, cport = pair_of_processes(host, host, port, n, close_all)
    print(f"ready {os.getpid()} {accepted[0].fileno()} {child} {cfd} {cport}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (os.kill(child, signal.SIGTERM), os._exit(0)))
    hold(accepted)


if __name__ == "__main__":
    a = sys.argv
    if a[1] == "halfclose":
        halfclose(a[2], int(a[3]))
    elif a[1] == "closefirst":
        closefirst(a[2], a[3], a[4], int(a[5]))
    elif a[1] == "leak":
        leak(int(a[2]), a[3], int(a[4]))
