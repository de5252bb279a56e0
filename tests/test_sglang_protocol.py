"""rlpost's trainer side against SGLang 0.5.23's weight-update protocol (tests/sglang_double: its endpoints over
scheduler-rank processes that join and receive as SGLang's do), two servers with tp_size 2 and 1."""

import pytest
import torch

from rlpost.net import free_port
from rlpost.protocol.wire import ServerError
from rlpost.resharding.servers import WeightServers
from rlpost.resharding.transports import BroadcastTransport, HTTPTransport, push_buckets
from tests.sglang_double.server import SGLangDouble


@pytest.fixture
def servers(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with SGLangDouble(2, tmp_path / "a") as a, SGLangDouble(1, tmp_path / "b") as b:
        yield a, b


def buckets():
    g = torch.Generator().manual_seed(0)
    return [[("model.layers.0.self_attn.qkv_proj.weight", torch.randn(12, 8, generator=g)),
             ("model.norm.weight", torch.randn(8, generator=g).to(torch.bfloat16))],
            [("lm_head.weight", torch.randn(16, 8, generator=g).to(torch.float16))]]


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                     b.reshape(-1).view(torch.uint8))


def test_trainer_joins_sglangs_group_rendezvous_and_broadcasts_buckets_bitwise(servers):
    """Rank 0 here, ranks 1-2 (server a's TP ranks) and 3 (server b) in SGLang's scheduler processes. Before the fix
    the trainer built the group on its own store layout and both sides waited on different keys until the timeout."""
    weights = WeightServers([s.url for s in servers])
    transport = BroadcastTransport(weights, "127.0.0.1", free_port(), "gloo")
    sent = push_buckets(buckets(), transport, "v1")
    transport.close()
    assert sent == 3
    expected = [dict(b) for b in buckets()]
    for server in servers:
        assert server.calls == ["begin", "distributed", "distributed", "end"]
        assert [(kind, version) for kind, version, _ in server.loaded] == [("distributed", "v1")] * 2
        for (_, _, per_rank), want in zip(server.loaded, expected):
            assert len(per_rank) == server.tp_size
            for got in per_rank:
                assert got.keys() == want.keys() and all(bitwise_equal(got[k], want[k]) for k in want)
    again = BroadcastTransport(weights, "127.0.0.1", free_port(), "gloo")  # the group was freed on both ends
    push_buckets(buckets()[:1], again, "v2")
    again.close()
    assert [v for _, v, _ in servers[1].loaded] == ["v1", "v1", "v2"]


def test_tensor_updates_send_one_serialization_per_tp_rank_inside_a_session(servers):
    transport = HTTPTransport(WeightServers([s.url for s in servers]))
    push_buckets(buckets(), transport, "v1")
    expected = [dict(b) for b in buckets()]
    for server in servers:
        assert server.calls == ["begin", "tensor", "tensor", "end"]
        for (_, _, per_rank), want in zip(server.loaded, expected):
            assert len(per_rank) == server.tp_size
            assert all(got.keys() == want.keys() and all(bitwise_equal(got[k], want[k]) for k in want)
                       for got in per_rank)


def test_a_failed_update_still_closes_the_session(servers):
    """SGLang refuses a second /begin_weight_update while a session is open: a sync that failed half-way must not
    leave one open, or every later sync fails."""
    weights = WeightServers([s.url for s in servers])

    class Failing(HTTPTransport):
        def push(self, bucket, last, version):
            if last:
                raise RuntimeError("lost the trainer")
            super().push(bucket, last, version)

    with pytest.raises(RuntimeError, match="lost the trainer"):
        push_buckets(buckets(), Failing(weights), "v1")
    assert all(not s.session_open and s.calls == ["begin", "tensor", "end"] for s in servers)
    push_buckets(buckets(), HTTPTransport(weights), "v2")
    assert [v for _, v, _ in servers[0].loaded] == ["v1", "v2", "v2"]


def test_an_update_outside_a_session_is_refused(servers):
    with pytest.raises(ServerError, match="HTTP 400.*must run between begin_weight_update"):
        WeightServers([servers[0].url]).update_from_tensor(buckets()[0], True, "v")
    assert servers[0].loaded == []
