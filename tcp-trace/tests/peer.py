"""Test peer for tcp-trace's integration tests.

halfclose HOST PORT: a server process (comm tt-server) and a client process (comm tt-client).
The client connects and shuts down its sending side; the server accepts and never closes.
Prints one line "ready SERVER_PID SERVER_FD CLIENT_PID CLIENT_FD CLIENT_PORT" and then waits:
SIGUSR1 makes that process close its socket; SIGTERM ends it.
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


if __name__ == "__main__":
    {"halfclose": halfclose}[sys.argv[1]](sys.argv[2], int(sys.argv[3]))
