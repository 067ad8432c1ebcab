"""Serves kmock's Kubernetes API emulator on HOST:PORT for the integration tests.

    serve.py HOST:PORT      (port 0: any free port)

Prints `ready PORT` once listening and serves until killed; the objects live
in memory. tests/src/kmock.rs runs it with the venv `cargo xtask setup` makes.

kmock (PyPI, not ours) parses the URLs, serves discovery, stores the objects
and creates, patches, gets and deletes them with Kubernetes' errors. What a
kube-rs watcher needs beyond that, kmock 0.8 lacks; `Emulator` adds it:

- resourceVersion: kmock stamps none on objects and lists with the literal
  "..."; kube-rs's watcher takes a watch event without one for an error
  (NoResourceVersion) and lists again, forever. Here every change takes the
  next number of one counter, as etcd's revision.
- watch from a resourceVersion: kmock starts every watch with all objects as
  ADDED, and loses a change made while a watch starts. Here a watch replays
  the changes after the given version, or all objects without one.
- timeoutSeconds: kmock keeps every watch open; here it ends on time.
- PUT (replace): kmock answers 404 "Endpoint Not Found"; here it replaces.
- a list's apiVersion and kind, an object's namespace from the URL, uid and
  creationTimestamp.

Left as kmock has them: no bookmarks (a server may send none), label and field
selectors and limit are ignored (one page of everything), no 410 Gone (the
changes are kept forever), patches merge JSON recursively.
"""

import asyncio
import copy
import datetime
import sys
import uuid

import aiohttp.web
import attrs
import kmock

VERBS = ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch']

# What the agent lists and watches. kmock serves a list only of a resource it
# knows, and takes discovery's kind from here.
RESOURCES = {
    'v1/services': kmock.ResourceInfo(kind='Service', singular='service', namespaced=True, verbs=VERBS),
    'discovery.k8s.io/v1/endpointslices': kmock.ResourceInfo(
        kind='EndpointSlice', singular='endpointslice', namespaced=True, verbs=VERBS
    ),
    'v1/nodes': kmock.ResourceInfo(kind='Node', singular='node', namespaced=False, verbs=VERBS),
    'networking.k8s.io/v1/servicecidrs': kmock.ResourceInfo(
        kind='ServiceCIDR', singular='servicecidr', namespaced=False, verbs=VERBS
    ),
}


class Journal(kmock.Bus):
    """kmock's feed of one resource's changes, kept whole so that a watch can
    resume from any resourceVersion."""

    def __init__(self, stamp):
        super().__init__()
        self.stamp = stamp
        self.changes = []  # (revision, event)

    async def put(self, *events):
        # kmock puts while holding its lock: revisions follow the commits.
        stamped = [self.stamp(event) for event in events]
        self.changes.extend(stamped)
        await super().put(*(event for _, event in stamped))


class Journals(dict):
    """kmock's feeds by resource, created on first use as its defaultdict is."""

    def __init__(self, stamp):
        super().__init__()
        self.stamp = stamp

    def __missing__(self, resource):
        journal = self[resource] = Journal(self.stamp)
        return journal


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    _revision: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self._buses = Journals(self._stamp)

    def _stamp(self, event):
        """The change's revision and a copy of it for the watches. The stored
        object gets the revision too: kmock hands over a shallow copy of the
        stored version, whose metadata is the stored one."""
        self._revision += 1
        meta = event['object']['metadata']
        meta['resourceVersion'] = str(self._revision)
        if event['type'] == 'ADDED':
            meta.setdefault('uid', str(uuid.uuid4()))
            now = datetime.datetime.now(datetime.UTC)
            meta.setdefault('creationTimestamp', now.strftime('%Y-%m-%dT%H:%M:%SZ'))
        return self._revision, copy.deepcopy(event)

    async def _handle(self, request):
        """Takes PUT, which kmock answers with 404, before kmock."""
        if request.resource is not None and isinstance(request.data, dict):
            # kmock keys the object by the URL's namespace but stores the body as sent.
            if request.namespace and request.method in (kmock.method.POST, kmock.method.PUT):
                request.data.setdefault('metadata', {}).setdefault('namespace', request.namespace)
            if request.method == kmock.method.PUT and request.name and not request.subresource:
                return await self._replace(request)
        return await super()._handle(request)

    async def _replace(self, request):
        """PUT: the body becomes the object's next version, keeping what the
        server set at creation."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            created = self.objects[key].raw['metadata']
            meta = request.data.setdefault('metadata', {})
            for field in ('uid', 'creationTimestamp'):
                meta[field] = created[field]
            self.objects[key].history.append(request.data)
            stored = self.objects[key].raw
            await self._buses[request.resource].put({'type': 'MODIFIED', 'object': stored})
        return aiohttp.web.json_response(stored)

    def _selected(self, request, namespace, name):
        return request.namespace in (None, namespace) and request.name in (None, name)

    def _current(self, request):
        """The live objects the request's URL selects."""
        return [
            copy.deepcopy(obj.raw)
            for (resource, namespace, name), obj in self.objects.items()
            if resource == request.resource and not obj.deleted and self._selected(request, namespace, name)
        ]

    async def _serve_list(self, request):
        """kmock's list has no kind and the resourceVersion "..."."""
        if request.resource not in self.resources:
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._current(request)
            revision = self._revision
        group, version = request.resource.group, request.resource.version
        return {
            'apiVersion': f'{group}/{version}' if group else version,
            'kind': f'{self.resources[request.resource].kind}List',
            'metadata': {'resourceVersion': str(revision)},
            'items': items,
        }

    async def _serve_watch(self, request):
        """kmock's watch ignores resourceVersion and timeoutSeconds."""
        since = request.params.get('resourceVersion', '')
        timeout = request.params.get('timeoutSeconds')
        try:
            since = int(since or 0)
            timeout = float(timeout) if timeout else None
        except ValueError:
            message = f'invalid watch: resourceVersion={since!r} timeoutSeconds={timeout!r}'
            raise kmock.KubernetesError(status=400, reason='BadRequest', message=message) from None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        journal = self._buses[request.resource]
        async with self._lock:
            if since == 0:
                backlog = [{'type': 'ADDED', 'object': obj} for obj in self._current(request)]
            else:
                backlog = [event for revision, event in journal.changes if revision > since]
            mark = await journal.mark()
        yield b''  # the response's headers, even if nothing changes
        try:
            changes = journal.stream(since=mark)
            for event in backlog:
                if self._watched(request, event):
                    yield event
            while deadline is None or loop.time() < deadline:
                left = None if deadline is None else deadline - loop.time()
                try:
                    event = await asyncio.wait_for(anext(changes), left)
                except TimeoutError:
                    return
                if self._watched(request, event):
                    yield event
        finally:
            await journal.unmark(mark)

    def _watched(self, request, event):
        meta = event['object']['metadata']
        return self._selected(request, meta.get('namespace'), meta.get('name'))


async def main(address):
    host, _, port = address.rpartition(':')
    emulator = Emulator()
    for resource, info in RESOURCES.items():
        emulator.resources[resource] = info
    async with emulator, kmock.Server(emulator, host=host, port=int(port)) as server:
        print(f'ready {server.port}', flush=True)
        await asyncio.Event().wait()


if __name__ == '__main__':
    if len(sys.argv) != 2 or ':' not in sys.argv[1]:
        sys.exit('usage: serve.py HOST:PORT')
    asyncio.run(main(sys.argv[1]))
