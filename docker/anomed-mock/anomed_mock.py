"""A stand-in for the AnoMed platform in `make container-test`: it takes the evaluation results
challenges submit (the routes of AnoMed's own mock) and shows them at `GET /submissions`."""

import threading

import falcon


class Submissions:
    """POSTed JSON results, per kind (`anonymizer` or `deanonymizer`), newest last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: dict[str, list] = {"anonymizer": [], "deanonymizer": []}

    def on_post_kind(self, req: falcon.Request, resp: falcon.Response, kind: str) -> None:
        if kind not in self._received:
            raise falcon.HTTPNotFound()
        record = req.get_media()
        with self._lock:
            self._received[kind].append(record)
        resp.media = record
        resp.status = falcon.HTTP_CREATED

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._lock:
            resp.media = self._received


class Alive:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"message": "AnoMed mock server is alive!"}


submissions = Submissions()
application = falcon.App()
application.add_route("/", Alive())
application.add_route("/submissions", submissions)
application.add_route("/submissions/{kind}-evaluation-results", submissions, suffix="kind")
