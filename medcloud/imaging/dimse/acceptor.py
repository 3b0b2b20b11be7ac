"""A lean C-STORE/C-ECHO acceptor on the DIMSE port: one asyncio event loop, no polling threads.

Why: pynetdicom serves every association with two threads that each poll with a 1 ms sleep (the
DUL and the Association reactors), and with 8-16 concurrent associations those threads and their
GIL hand-offs cost more CPU than storing the instances. Ingest is by far the busiest DIMSE
service, so this module serves it without the reactors: the listener, the association
negotiation and the P-DATA exchange run as coroutines on one event-loop thread, and only the
blocking store (``GroupCommit.store`` through the caller's ``store`` function) runs in a small
thread pool.

What is served here, and what is not:

* An association whose A-ASSOCIATE-RQ proposes only storage SOP classes (standard, private or
  unknown ones, as pynetdicom's unrestricted storage service classifies them) and Verification,
  and whose user information carries nothing beyond the maximum length and implementation items
  (PS3.7 Annex D.3.3.1-2), is negotiated and served here: C-ECHO and C-STORE.
* Any other association (C-FIND, C-MOVE, C-GET, storage commitment, role selection, user
  identity, extended negotiation) is handed to the pynetdicom server, which listens on an
  internal 127.0.0.1 port: its bytes are proxied both ways, starting with the A-ASSOCIATE-RQ
  already read. pynetdicom therefore applies its own calling-AE check and services to it
  unchanged; only the peer address it logs is the proxy's.

Presentation contexts are negotiated with pynetdicom's own ``negotiate_unrestricted`` against the
supported contexts the pynetdicom AE declares, so both paths accept exactly the same contexts.
The data set of a C-STORE is never decoded: the Part-10 bytes are the preamble, the File Meta
pynetdicom would build (``command.file_meta``, the same bytes as its ``create_file_meta`` /
``encode_file_meta``, from the command and the context's transfer syntax) and the data set
fragments as received (PS3.7 §9.3.1, Annex E).

PDU layouts: PS3.8 §9.3 (A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF with PDV items and their message control
header, A-RELEASE-RQ/RP, A-ABORT); command set: PS3.7 §9.3.1 (C-STORE), §9.3.5 (C-ECHO), group
0000 always in Implicit VR Little Endian (PS3.7 §6.3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom.uid import UID
from pynetdicom import pdu
from pynetdicom import sop_class as sop_class_module
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_unrestricted
from pynetdicom.sop_class import _STORAGE_CLASSES

from medcloud.imaging.dimse import command

log = logging.getLogger("medcloud.dimse")

VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"  # PS3.7 Annex A.2.1
ARTIM_SECONDS = 30.0  # an accepted connection must send its A-ASSOCIATE-RQ within this (pynetdicom: 30 s)
NETWORK_TIMEOUT = 60.0  # an idle association is aborted after this (pynetdicom's ae.network_timeout)
MAX_RQ_BYTES = 1 << 20  # an A-ASSOCIATE-RQ with 128 contexts of 20 syntaxes each is ~200 KB
# pynetdicom (<= 3.0.4) as requestor races with a fast A-ASSOCIATE-RJ: its DUL thread handles the
# RJ and closes the socket before its ACSE thread has checked that the connection opened, and
# it then reports an abort instead of the rejection. pynetdicom's own acceptor is never that fast.
REJECT_DELAY = 0.05
PDU_HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")
RELEASE_RP = pdu.A_RELEASE_RP().encode()
_PLAIN_USER_ITEMS = (MaximumLengthNotification, ImplementationClassUIDNotification,
                     ImplementationVersionNameNotification)
_STORAGE_UIDS = frozenset(_STORAGE_CLASSES.values())

# store(part10_bytes, calling_ae, sop_instance_uid) -> (status, error comment or None)
StoreFunction = Callable[[bytes, str, str], tuple[int, str | None]]


class ProtocolError(Exception):
    """The peer broke PS3.8 (unexpected PDU, bad PDV, unknown context): the association is aborted."""

    def __init__(self, message: str, reason: int = 0x02):
        super().__init__(message)
        self.reason = reason  # A-ABORT provider reason (PS3.8 Table 9-26): 1 unrecognised, 2 unexpected PDU


@dataclass(frozen=True)
class AcceptorConfig:
    """What the acceptor needs from the SCP: identity, policy and the functions it calls."""

    host: str
    port: int
    ae_title: str
    allowed_callers: list[str] | None  # None: anyone; []: no one
    supported_contexts: list[PresentationContext]
    implementation_class_uid: str
    implementation_version_name: str | None
    max_pdu: int
    max_associations: int
    max_instance_bytes: int
    store: StoreFunction
    on_end: Callable[[], None]  # after each association (flush the study-change hooks)
    handoff_port: Callable[[], int]  # the internal pynetdicom server's port
    handoff_active: Callable[[], int] = field(default=lambda: 0)  # associations pynetdicom is serving


def is_lean(rq: A_ASSOCIATE) -> bool:
    """True when only storage/Verification contexts and plain user information are proposed."""
    contexts = rq.presentation_context_definition_list
    if not contexts:
        return False
    if any(not isinstance(item, _PLAIN_USER_ITEMS) for item in rq.user_information):
        return False
    return all(_is_storage_or_verification(UID(str(cx.abstract_syntax))) for cx in contexts)


def _is_storage_or_verification(uid: UID) -> bool:
    # The split pynetdicom's negotiate_unrestricted makes (presentation.py): private, listed
    # storage classes and UIDs it has no name for are storage.
    return (uid == VERIFICATION or uid.is_private or uid in _STORAGE_UIDS
            or not hasattr(sop_class_module, uid.keyword))


class StoreAcceptor:
    """The listener: ``start()`` binds (SO_REUSEPORT) and serves in one thread; ``stop()`` ends it."""

    def __init__(self, config: AcceptorConfig):
        self.config = config
        self.port = config.port
        self.active = 0  # lean associations open now
        self.served = 0  # lean associations accepted so far
        self.handed_off = 0  # associations proxied to pynetdicom so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(max_workers=config.max_associations + 4, thread_name_prefix="dimse-store")

    def start(self) -> int:
        """Bind and serve; returns the bound port. Raises OSError when the address cannot be bound."""
        sock = _listen(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"dimse-loop:{self.port}", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(sock), loop).result(timeout=10)
        return self.port

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._accepted, sock=sock, limit=1 << 20)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):  # a loop that is already gone has nothing left to close
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        _nodelay(writer)
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(ARTIM_SECONDS):
                kind, raw = await _read_pdu(reader, MAX_RQ_BYTES)
            if kind != 0x01:
                raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{kind:02X}", reason=0x01)
            raw = PDU_HEADER.pack(kind, len(raw)) + raw  # pynetdicom decodes whole PDUs
            # ~10-20 ms for the 128 contexts storescu proposes: off the loop, other associations go on
            rq = await asyncio.get_running_loop().run_in_executor(self._pool, _decode_rq, raw)
            if is_lean(rq):
                await self._serve_lean(rq, reader, writer, peer)
            else:
                await self._handoff(raw, reader, writer)
        except ProtocolError as e:
            log.info("DIMSE association from %s aborted: %s", peer, e)
            await _closing(reader, writer, _abort(e.reason))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # silent peer, or it went away: nothing to answer
        except asyncio.CancelledError:
            writer.write(_abort(0x00))  # the SCP stops
        except Exception:  # noqa: BLE001 - one broken association must never end the listener
            log.exception("DIMSE association from %s failed", peer)
            await _closing(reader, writer, _abort(0x00))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _serve_lean(self, rq: A_ASSOCIATE, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          peer: object) -> None:
        cfg = self.config
        calling = str(rq.calling_ae_title).strip()
        if cfg.allowed_callers is not None and calling not in [a.strip() for a in cfg.allowed_callers]:
            log.info("DIMSE association from %s (%s) rejected: calling AE title not recognised", calling, peer)
            await asyncio.sleep(REJECT_DELAY)
            return await _closing(reader, writer, _reject(rq, 0x01, 0x01, 0x03))
        if self.active + cfg.handoff_active() + 1 > cfg.max_associations:
            await asyncio.sleep(REJECT_DELAY)  # local limit exceeded (PS3.8 9.3.4):
            return await _closing(reader, writer, _reject(rq, 0x02, 0x03, 0x02))
        loop = asyncio.get_running_loop()
        accepted, ac = await loop.run_in_executor(self._pool, self._negotiate, rq)
        await _send(writer, ac)
        self.active += 1
        self.served += 1
        assoc = _Association(accepted, _peer_max(rq), calling, cfg.max_instance_bytes)
        try:
            async with _idle_abort(), asyncio.timeout(None) as idle:
                while True:
                    idle.reschedule(loop.time() + NETWORK_TIMEOUT)
                    # we advertise max_pdu; peers that ignore it still cannot exceed the instance limit
                    kind, body = await _read_pdu(reader, cfg.max_instance_bytes)
                    idle.reschedule(None)  # a slow store is not an idle peer
                    if kind == 0x04:
                        for msg in assoc.p_data(body):
                            writer.write(await self._answer(assoc, msg))
                    elif kind == 0x05:
                        return await _closing(reader, writer, RELEASE_RP)
                    elif kind == 0x07:
                        return
                    else:
                        raise ProtocolError(f"unexpected PDU type 0x{kind:02X} on an established association")
        finally:
            self.active -= 1
            await loop.run_in_executor(self._pool, cfg.on_end)

    async def _answer(self, assoc: _Association, msg: _Message) -> bytes:
        cmd = msg.command
        if cmd.command_field == command.C_ECHO_RQ:
            rsp = command.response(cmd, command.C_ECHO_RSP, 0x0000)
        elif cmd.command_field == command.C_STORE_RQ:
            if msg.data is None:
                raise ProtocolError("C-STORE-RQ without a data set", reason=0x06)
            part10 = b"".join((b"\x00" * 128, b"DICM", command.file_meta(
                cmd.sop_class_uid, cmd.sop_instance_uid, assoc.contexts[msg.context_id]), *msg.data))
            code, comment = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.config.store, part10, assoc.calling_ae, cmd.sop_instance_uid)
            rsp = command.response(cmd, command.C_STORE_RSP, code, comment)
        else:
            raise ProtocolError(f"DIMSE command 0x{cmd.command_field:04X} is not served here", reason=0x06)
        return p_data_tf(msg.context_id, rsp, assoc.peer_max, is_command=True)

    def _negotiate(self, rq: A_ASSOCIATE) -> tuple[dict[int, str], bytes]:
        """The accepted contexts (ID -> transfer syntax) and the encoded A-ASSOCIATE-AC."""
        result, _ = negotiate_unrestricted(rq.presentation_context_definition_list,
                                           self.config.supported_contexts, {})
        accepted = {int(cx.context_id): str(cx.transfer_syntax[0]) for cx in result
                    if cx.result == 0x00 and cx.context_id is not None}
        return accepted, self._accept(rq, result)

    def _accept(self, rq: A_ASSOCIATE, result: list[PresentationContext]) -> bytes:
        cfg = self.config
        ac = A_ASSOCIATE()
        ac.application_context_name = UID(APPLICATION_CONTEXT_NAME)
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = (
            [cx for cx in result if cx.result == 0x00] + [cx for cx in result if cx.result != 0x00])
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = cfg.max_pdu
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = UID(cfg.implementation_class_uid)
        items: list[object] = [max_length, class_uid]
        if cfg.implementation_version_name:
            version = ImplementationVersionNameNotification()
            version.implementation_version_name = cfg.implementation_version_name
            items.append(version)
        ac.user_information = items  # type: ignore[assignment]
        return bytes(pdu.A_ASSOCIATE_AC(ac).encode())

    async def _handoff(self, raw: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Proxy this association to the pynetdicom server, the A-ASSOCIATE-RQ PDU (``raw``) first."""
        inner_reader, inner_writer = await asyncio.open_connection("127.0.0.1", self.config.handoff_port())
        self.handed_off += 1
        _nodelay(inner_writer)
        inner_writer.write(raw)
        pumps = {asyncio.create_task(_pump(reader, inner_writer)), asyncio.create_task(_pump(inner_reader, writer))}
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:  # either side closed (or the SCP stops): close both
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            inner_writer.close()


@dataclass
class _Message:
    context_id: int
    command: command.Command
    data: list[memoryview] | None = None


class _Association:
    """Reassembles DIMSE messages from PDVs (PS3.8 Annex E): command fragments, then data set fragments."""

    def __init__(self, contexts: dict[int, str], peer_max: int, calling_ae: str, max_data: int):
        self.contexts = contexts
        self.peer_max = peer_max
        self.calling_ae = calling_ae
        self.max_data = max_data
        self._command: list[memoryview] = []
        self._command_context: int | None = None
        self._pending: _Message | None = None  # command read, data set arriving
        self._data_bytes = 0

    def p_data(self, body: bytes) -> list[_Message]:
        """The messages a P-DATA-TF completes (usually none or one)."""
        done: list[_Message] = []
        view = memoryview(body)
        offset = 0
        while offset < len(view):
            if offset + PDV_HEADER.size > len(view):
                raise ProtocolError("truncated PDV item", reason=0x06)
            length, context_id, control = PDV_HEADER.unpack_from(view, offset)
            end = offset + 4 + length
            if length < 2 or end > len(view):
                raise ProtocolError("PDV item length out of range", reason=0x06)
            if context_id not in self.contexts:
                raise ProtocolError(f"PDV for presentation context {context_id}, which was not accepted", 0x06)
            message = self._pdv(context_id, control, view[offset + 6:end])
            if message is not None:
                done.append(message)
            offset = end
        return done

    def _pdv(self, context_id: int, control: int, fragment: memoryview) -> _Message | None:
        last = bool(control & 0x02)
        if control & 0x01:  # command fragment
            if self._pending is not None:
                raise ProtocolError("command fragment while a data set was expected", reason=0x06)
            if self._command_context not in (None, context_id):
                raise ProtocolError("command fragments on two presentation contexts", reason=0x06)
            self._command_context = context_id
            self._command.append(fragment)
            if not last:
                return None
            raw = b"".join(self._command)
            self._command, self._command_context = [], None
            try:
                cmd = command.decode(raw)
            except ValueError as e:
                raise ProtocolError(f"undecodable command set: {e}", reason=0x06) from e
            message = _Message(context_id, cmd)
            if not cmd.has_data:
                return message
            message.data, self._data_bytes = [], 0
            self._pending = message
            return None
        pending = self._pending
        if pending is None or pending.data is None or pending.context_id != context_id:
            raise ProtocolError("data set fragment without its command on this context", reason=0x06)
        self._data_bytes += len(fragment)
        if self._data_bytes > self.max_data:
            raise ProtocolError(f"data set larger than {self.max_data} bytes", reason=0x00)
        pending.data.append(fragment)
        if not last:
            return None
        self._pending = None
        return pending


def p_data_tf(context_id: int, payload: bytes, peer_max: int, *, is_command: bool) -> bytes:
    """P-DATA-TF PDUs carrying ``payload`` on one context, each within the peer's maximum length (0: none)."""
    room = len(payload) if peer_max == 0 else max(peer_max - 6, 1)
    out: list[bytes] = []
    for start in range(0, max(len(payload), 1), max(room, 1)):
        chunk = payload[start:start + room]
        control = (0x01 if is_command else 0x00) | (0x02 if start + room >= len(payload) else 0x00)
        out.append(PDU_HEADER.pack(0x04, len(chunk) + 6) + PDV_HEADER.pack(len(chunk) + 2, context_id, control)
                   + chunk)
    return b"".join(out)


def _reject(rq: A_ASSOCIATE, result: int, source: int, diagnostic: int) -> bytes:
    rj = A_ASSOCIATE()
    rj.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    rj.calling_ae_title = rq.calling_ae_title
    rj.called_ae_title = rq.called_ae_title
    rj.result = result
    rj.result_source = source
    rj.diagnostic = diagnostic
    return bytes(pdu.A_ASSOCIATE_RJ(rj).encode())


def _decode_rq(raw: bytes) -> A_ASSOCIATE:
    rq_pdu = pdu.A_ASSOCIATE_RQ()
    try:
        rq_pdu.decode(raw)
        return rq_pdu.to_primitive()
    except Exception as e:  # noqa: BLE001 - undecodable request: abort, keep listening
        raise ProtocolError(f"undecodable A-ASSOCIATE-RQ: {type(e).__name__}", reason=0x01) from e


def _peer_max(rq: A_ASSOCIATE) -> int:
    for item in rq.user_information:
        if isinstance(item, MaximumLengthNotification):
            return int(item.maximum_length_received or 0)
    return 0


async def _read_pdu(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    kind, length = PDU_HEADER.unpack(await reader.readexactly(PDU_HEADER.size))
    if kind not in range(1, 8):
        raise ProtocolError(f"unrecognised PDU type 0x{kind:02X}", reason=0x01)
    if length > limit:
        raise ProtocolError(f"PDU of {length} bytes exceeds {limit}", reason=0x06)
    return kind, await reader.readexactly(length)


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


@contextlib.asynccontextmanager
async def _idle_abort() -> AsyncIterator[None]:
    try:
        yield
    except TimeoutError:
        raise ProtocolError(f"idle for {NETWORK_TIMEOUT:.0f} s", reason=0x00) from None


def _abort(reason: int) -> bytes:
    # A-ABORT (PS3.8 §9.3.8): source 2 = service provider, with its reason
    return bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, reason])


async def _closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, last: bytes) -> None:
    """Send the last PDU (A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT), then wait for the peer to close.

    PS3.8 §9.2 (state Sta13): the requestor closes the transport; closing first can reach the peer
    before it has read the PDU (pynetdicom then reports "aborted" instead of "rejected"). ARTIM
    bounds the wait.
    """
    with contextlib.suppress(Exception):
        writer.write(last)
        async with asyncio.timeout(ARTIM_SECONDS):
            await writer.drain()
            while await reader.read(1 << 16):
                pass


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await src.read(1 << 16):
            dst.write(data)
            await dst.drain()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # several SCP processes share the port (pool.py)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
