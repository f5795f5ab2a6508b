"""The party SDK's HTTP behaviour against a raw socket server: a kept-alive connection the server
closes as the SDK reuses it (gunicorn's 2 s idle timeout against a keygen of about that long) is
sent once more on a fresh connection, and nothing else is resent."""

import socket
import threading

import pytest
import requests

from anonymizer.party.transport import resent_if_dropped

OK = b"HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


def read_request(connection: socket.socket) -> bytes:
    """One HTTP request's bytes (headers and a Content-Length body), b"" if the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        body += connection.recv(65536)
    return head


class DroppingServer:
    """Answers the first request 200 and keeps the connection, closes it unanswered on the second
    (`drops` times in all), answers every later connection's requests 201."""

    def __init__(self, drops: int = 1) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.drops = drops
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        first = True
        while True:
            connection, _ = self.listener.accept()
            with connection:
                while head := read_request(connection):
                    self.requests.append(head.split(b"\r\n")[0])
                    if first:
                        connection.sendall(OK % 200)
                        first = False
                    elif self.drops:
                        self.drops -= 1
                        break  # closed without an answer
                    else:
                        connection.sendall(OK % 201)


def test_a_connection_dropped_before_any_answer_is_sent_once_more():
    server = DroppingServer()
    session = requests.Session()
    assert session.get(server.url + "/fhe/info").status_code == 200  # kept alive in the pool
    response = resent_if_dropped(lambda: session.post(server.url + "/fhe/keys", data=b"k" * 4096))
    assert response.status_code == 201
    assert [line.split(b" ")[0] for line in server.requests] == [b"GET", b"POST", b"POST"]


def test_without_the_resend_the_dropped_request_fails():
    server = DroppingServer()
    session = requests.Session()
    session.get(server.url + "/")
    with pytest.raises(requests.ConnectionError):
        session.post(server.url + "/fhe/keys", data=b"k")  # what the SDK did before


def test_a_second_drop_is_raised_not_resent_again():
    server = DroppingServer(drops=2)
    session = requests.Session()
    session.get(server.url + "/")
    with pytest.raises(requests.ConnectionError):
        resent_if_dropped(lambda: session.post(server.url + "/fhe/keys", data=b"k"))
    assert len(server.requests) == 3
