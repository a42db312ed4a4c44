"""What the controller hears last about a volume, and app errors kept at the controller (issue 11).

EVE's rules these tests hold edgevol to, from lf-edge/eve:

- pkg/pillar/cmd/zedagent/handlemetrics.go:1356-1372: a deleted volume is reported once more with
  only its uuid (PublishVolumeToZedCloud with a nil status; handlevolume.go:235-243 calls it on
  every VolumeStatus delete, an old generation's included).
- pkg/pillar/cmd/zedagent/handlemetrics.go:1425: that report is queued under the volume's uuid
  alone (queueInfoToDest(ctx, dest, uuid, ...)); pkg/pillar/controllerconn/deferred.go:518-526,
  SetDeferred replaces the queued item of the same key. A controller therefore keys a volume by
  uuid, and a deletion heard after the live generation's report would make the volume gone.
- pkg/pillar/cmd/zedagent/handlemetrics.go:1136-1171: an app is reported as ZInfoApp with AppID
  and its errors appended to appErr; a deleted app with its AppID alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgevol.api import messages as m
from edgevol.device.report.outbox import Reporter
from edgevol.device.state import StateStore
from edgevol.device.uplink.wiretrace import load_exchange
from tests.conftest import by_name
from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401

MiB = 1 << 20
S = m.ZSwState


def _info_posts(trace: Path) -> list[tuple[int, Any]]:
    """(status, ZInfoMsg) of every info POST, in the order the device sent them."""
    out = []
    for path in sorted(trace.glob("*-POST-info.json")):
        ex = load_exchange(path)
        out.append((ex["status"], m.ZInfoMsg.FromString(
            m.AuthContainer.FromString(ex["request_body"]).protectedPayload.payload)))
    return out


def _volume(store: StateStore, uuid: str, generation: int, state: int) -> None:
    store.insert("volumes", uuid=uuid, generation=generation, display_name="data", state=state,
                 max_size=MiB, create_time=1.0, ref_change_time=1.0)


def _drain(store: StateStore) -> list[Any]:
    """Deliver the outbox as the info loop does (seq order, ack each); the messages sent."""
    sent = []
    for key, seq, payload in store.outbox_items():
        sent.append(m.ZInfoMsg.FromString(payload))
        store.outbox_ack(key, seq)
    return sent


def _last_vinfo(sent: list[Any], uuid: str) -> Any:
    return [msg.vinfo for msg in sent if msg.WhichOneof("InfoContent") == "vinfo" and msg.vinfo.uuid == uuid][-1]


def test_old_generation_deletion_is_never_heard_after_the_live_report(tmp_path) -> None:
    """Unit level, through the outbox: the purge's old generation goes after the new one is reported."""
    vol = "7b8f3a52-0c0e-4f0e-9a11-3c1d2e4f5a6b"
    store = StateStore(tmp_path / "state.db")
    rep = Reporter(store, "dev")
    _volume(store, vol, 0, S.CREATED_VOLUME)
    rep.sync()
    _drain(store)

    # Make-before-break: generation 1 is created and its report delivered before generation 0 goes.
    _volume(store, vol, 1, S.CREATED_VOLUME)
    rep.sync()
    assert _last_vinfo(_drain(store), vol).generation_count == 1
    rep.deleted("volume", vol, 0)  # as gc does: queued before the row goes
    store.delete("volumes", vol, 0)
    rep.sync()
    sent = _drain(store)
    assert [(msg.vinfo.displayName, msg.vinfo.generation_count) for msg in sent] == [("", 0), ("data", 1)]
    last = _last_vinfo(sent, vol)
    assert (last.state, last.generation_count) == (S.CREATED_VOLUME, 1)

    # Generation 2's report still queued when generation 1 goes: it moves after the deletion,
    # and a crash before the next sync still re-queues it (the fingerprint went in the same transaction).
    _volume(store, vol, 2, S.CREATED_VOLUME)
    rep.sync()
    rep.deleted("volume", vol, 1)
    store.delete("volumes", vol, 1)
    store.close()
    store = StateStore(tmp_path / "state.db")
    Reporter(store, "dev").sync()
    sent = _drain(store)
    assert [(msg.vinfo.displayName, msg.vinfo.generation_count) for msg in sent] == [("", 1), ("data", 2)]
    store.close()


def test_purge_the_last_message_for_the_volume_is_the_live_generation(controller_factory, agent_factory,  # noqa: F811
                                                                      tmp_path) -> None:
    """Eden tests/volume purge scenario, through a real controller and device in online mode."""
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    vol = ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "data", "origin": "blank",
                                                           "max_size_bytes": 2 * MiB})
    trace = tmp_path / "trace"
    agent.start("--trace-wire", str(trace))

    def reported() -> dict[int, str]:
        return {r["generation"]: r["state_name"]
                for r in ctrl.admin("GET", "/devices/dev1/reported", params={"kind": "volume"})}

    wait_for(lambda: reported() == {0: "CREATED_VOLUME"}, 60, "generation 0 created")
    assert ctrl.admin("POST", "/devices/dev1/volumes/data/purge")["generation_count"] == 1
    wait_for(lambda: reported() == {1: "CREATED_VOLUME"} and not agent.outbox(), 90, "purge converged")

    sent = [msg.vinfo for status, msg in _info_posts(trace)
            if status == 201 and msg.WhichOneof("InfoContent") == "vinfo" and msg.vinfo.uuid == vol["uuid"]]
    gone = [v for v in sent if not v.displayName]
    assert len(gone) == 1 and gone[0].generation_count == 0  # exactly one "gone", for generation 0
    assert (sent[-1].state, sent[-1].generation_count) == (S.CREATED_VOLUME, 1)
    assert reported() == {1: "CREATED_VOLUME"}


def test_app_errors_are_kept_at_the_controller_and_go_with_the_app(controller_factory, agent_factory,  # noqa: F811
                                                                   tmp_path) -> None:
    """Refs changed without a purge bump: the device's appErr is listed by the controller, kind "app"."""
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    for name in ("one", "two"):
        ctrl.admin("POST", "/devices/dev1/volumes", json={"name": name, "origin": "blank", "max_size_bytes": 2 * MiB})
    app = ctrl.admin("POST", "/devices/dev1/apps", json={"name": "vm", "volumes": ["one"]})
    agent.start()

    def apps() -> list[dict[str, Any]]:
        return ctrl.admin("GET", "/devices/dev1/reported", params={"kind": "app"})

    wait_for(lambda: [a["object_key"] for a in apps()] == [app["uuid"]], 60, "the app reported")
    ctrl.admin("PUT", "/devices/dev1/apps/vm/volume-refs", json={"volumes": ["one", "two"]})
    row = wait_for(lambda: [a for a in apps() if a["error"]], 60, "the app error at the controller")[0]
    assert (row["kind"], row["display_name"], row["generation"]) == ("app", "vm", 0)
    assert "without a purge counter bump" in row["error"]["description"]
    assert row["error"]["severity"] == m.Severity.SEVERITY_ERROR
    assert by_name(agent.status()["apps"], "vm")["error"]["description"] in row["error"]["description"]
    everything = ctrl.admin("GET", "/devices/dev1/reported")
    assert [r["object_key"] for r in everything if r["kind"] == "app"] == [app["uuid"]]

    ctrl.admin("DELETE", "/devices/dev1/apps/vm")
    wait_for(lambda: not apps(), 60, "the app gone at the controller")
