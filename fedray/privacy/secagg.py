"""Secure aggregation (Bonawitz et al. 2017, SecAgg; Bell et al. 2020, SecAgg+), as pure pieces.

One round, for the clients U sampled into it:

1. **Keys** (client side, `SecAggClients`): each client makes an X25519 key pair and a 32-byte
   self-mask seed b_i, and Shamir-shares both its private key and b_i among its neighbours
   (everyone for secagg; a random k-regular Harary graph for secagg+, `neighbour_graph`).
2. **Masking** (client side, `mask_vector`, run inside `ClientActor.fit`): the client's integer
   vector x_i (fixed-point, `quantize`) becomes
   ``y_i = x_i + PRG(b_i) + sum_{j in N(i)} sign(i, j) * PRG(s_ij)  (mod 2^mod_bits)``
   where s_ij = HKDF(X25519(sk_i, pk_j)) is the pair's agreed seed, sign is + for i < j and -
   for i > j, and PRG is the AES-256-CTR keystream under a seed.
3. **Unmasking** (server side, `SecAggServer`): it sums the y_i it received (set U3). Pairwise
   masks between two senders cancel. For every sender the server asks the responding neighbours
   for their shares of b_i and removes PRG(b_i); for every sampled client that never sent (it
   dropped before masking) it asks for shares of its private key, rebuilds s_ij with each sender's
   public key and removes those masks. A client answers for one owner with a b share or a key
   share, never both. Fewer than `threshold` answering neighbours of any owner -> SecAggError.

A sender that vanishes after masking (answers nothing in step 3) is still summed: its b_i comes
back from its neighbours' shares. The server only ever holds masked vectors and the unmasked sum.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Shamir's field: the Mersenne prime 2^521 - 1 holds any 32-byte secret
PRIME = (1 << 521) - 1
MODES = ("secagg", "secagg+")


class SecAggError(RuntimeError):
    """A secure-aggregation round that cannot be unmasked (too few shares) or would overflow."""


def check_config(fl: dict) -> None:
    """`fl.secure_agg` and, when it is on, the `fl.secagg` knobs (ConfigError naming the key)."""
    from fedray.checks import choice, mapping, number
    from fedray.config import ConfigError

    mode = fl.get("secure_agg") or "none"
    choice("fl.secure_agg", mode, ("none", *MODES))
    if mode == "none":
        return
    sa = settings(mapping("fl.secagg", fl.get("secagg") or {}))
    number("fl.secagg.clip", sa["clip"], 0, low_open=True)
    number("fl.secagg.quant_bits", sa["quant_bits"], 1, 62, integer=True)
    choice("fl.secagg.mod_bits", sa["mod_bits"], (32, 64))
    number("fl.secagg.threshold", sa["threshold"], 0, 1, low_open=True)
    number("fl.secagg.degree", sa["degree"], 2, integer=True, optional=True)
    if (sa["degree"] or 0) % 2:
        raise ConfigError(f"fl.secagg.degree: {sa['degree']} is not even (secagg+'s graph)")
    number("fl.secagg.drop_after_mask", sa["drop_after_mask"], 0, 1, high_open=True)


def settings(given: dict) -> dict:
    """`fl.secagg` over the schema's defaults (`fedray.config.SecAggConfig`)."""
    from dataclasses import asdict

    from fedray.config import SecAggConfig

    return {**asdict(SecAggConfig()), **given}


# ---------------------------------------------------------------- fixed-point encoding


def quantize(values: np.ndarray, clip: float, quant_bits: int) -> tuple[np.ndarray, int]:
    """Clip to [-clip, clip] and map onto the integers 0..2^quant_bits - 1 (round to nearest).

    Returns the integers (int64) and how many values the clipping changed. The decoding error of
    an in-range value is at most clip / (2^quant_bits - 1).
    """
    levels = (1 << quant_bits) - 1
    v = np.asarray(values, dtype=np.float64)
    clipped = int(np.count_nonzero(np.abs(v) > clip))
    q = np.rint((np.clip(v, -clip, clip) + clip) * (levels / (2 * clip)))
    return q.astype(np.int64), clipped


def dequantize_sum(total: np.ndarray, weight: float, clip: float, quant_bits: int) -> np.ndarray:
    """The weighted mean of the encoded values from their weighted integer sum and total weight."""
    levels = (1 << quant_bits) - 1
    return np.asarray(total, dtype=np.float64) * (2 * clip / levels) / weight - clip


def ring_dtype(mod_bits: int) -> np.dtype:
    """The unsigned dtype whose wrap-around arithmetic is the ring Z / 2^mod_bits."""
    if mod_bits not in (32, 64):
        raise ValueError(f"mod_bits must be 32 or 64, got {mod_bits}")
    return np.dtype(np.uint32 if mod_bits == 32 else np.uint64)


# ---------------------------------------------------------------- PRG, key agreement, Shamir


def prg(seed: bytes, length: int, mod_bits: int) -> np.ndarray:
    """`length` ring elements from the AES-256-CTR keystream under a 32-byte seed."""
    dtype = ring_dtype(mod_bits)
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    stream = enc.update(b"\0" * (length * dtype.itemsize)) + enc.finalize()
    return np.frombuffer(stream, dtype=dtype.newbyteorder("<")).astype(dtype)


def pair_seed(private: bytes, peer_public: bytes, tag: bytes, i: int, j: int) -> bytes:
    """The 32-byte mask seed two clients agree on: HKDF-SHA256 over their X25519 secret."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    lo, hi = min(i, j), max(i, j)
    info = b"fedray-secagg-pair|" + tag + f"|{lo}|{hi}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def shamir_split(secret: bytes, holders: Sequence[int], threshold: int) -> dict[int, int]:
    """Shares of `secret` per holder id (the polynomial at x = id + 1); `threshold` rebuild it."""
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} must be in 1..{len(holders)} (holders)")
    coeffs = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares = {}
    for h in holders:
        x, acc = h + 1, 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[h] = acc
    return shares


def shamir_combine(shares: dict[int, int], size: int = 32) -> bytes:
    """Lagrange interpolation at 0 of {holder id: share}: the secret (as `size` bytes)."""
    xs = {h: h + 1 for h in shares}
    secret = 0
    for h, y in shares.items():
        num, den = 1, 1
        for o in shares:
            if o != h:
                num = num * (-xs[o]) % PRIME
                den = den * (xs[h] - xs[o]) % PRIME
        secret = (secret + y * num * pow(den, -1, PRIME)) % PRIME
    if secret.bit_length() > 8 * size:
        raise SecAggError(f"{len(shares)} shares do not rebuild a {size}-byte secret")
    return secret.to_bytes(size, "big")


# ---------------------------------------------------------------- neighbour graph


def neighbour_graph(
    ids: Sequence[int], mode: str, degree: int | None, tag: bytes
) -> dict[int, list[int]]:
    """Who masks with whom: everyone (secagg) or a random k-regular Harary graph (secagg+).

    secagg+ (Bell et al. 2020): the clients are put on a ring in an order drawn from `tag`
    (the round's public randomness) and each is joined to its k/2 nearest on either side, so
    every client has exactly k neighbours (k even, k < n; k >= n - 1 is the complete graph).
    """
    ids = sorted(int(i) for i in ids)
    n = len(ids)
    if mode == "secagg" or degree is None or degree >= n - 1:
        return {i: [j for j in ids if j != i] for i in ids}
    if mode != "secagg+":
        raise ValueError(f"unknown secure aggregation mode {mode!r}; choose one of {MODES}")
    if degree < 2 or degree % 2:
        raise ValueError(f"secagg+ degree must be an even number >= 2, got {degree}")
    rng = np.random.default_rng(np.frombuffer(hashlib.sha256(tag).digest(), dtype=np.uint32))
    ring = [ids[p] for p in rng.permutation(n)]
    graph: dict[int, set[int]] = {i: set() for i in ids}
    for pos, i in enumerate(ring):
        for step in range(1, degree // 2 + 1):
            j = ring[(pos + step) % n]
            graph[i].add(j)
            graph[j].add(i)
    return {i: sorted(graph[i]) for i in ids}


def default_degree(n: int) -> int:
    """secagg+'s k when unset: about 2·log2(n), even, and never more than the others (n - 1)."""
    k = 2 * math.ceil(math.log2(max(n, 2)))
    return min(k + k % 2, n - 1)


def share_threshold(num_neighbours: int, fraction: float) -> int:
    """Shares needed to rebuild one client's secrets: ceil(fraction x its neighbours), >= 1."""
    return max(1, min(num_neighbours, math.ceil(fraction * num_neighbours - 1e-9)))


# ---------------------------------------------------------------- the protocol's two sides


@dataclass(frozen=True)
class RoundPublic:
    """What every party of one round may read: public keys, the graph, thresholds, encoding."""

    tag: bytes  # distinguishes this round's seeds (run, round)
    public_keys: dict[int, bytes]
    graph: dict[int, list[int]]
    thresholds: dict[int, int]
    mod_bits: int
    length: int  # ring elements per masked vector


@dataclass(frozen=True)
class ClientSecrets:
    """One client's secrets for one round (lives with the client; never given to the server)."""

    private_key: bytes
    self_seed: bytes


def mask_vector(x: np.ndarray, cid: int, mine: ClientSecrets, public: RoundPublic) -> np.ndarray:
    """y = x + PRG(b) + sum over neighbours of ±PRG(pair seed), all mod 2^mod_bits."""
    dtype = ring_dtype(public.mod_bits)
    if x.shape != (public.length,):
        raise ValueError(f"secagg: vector of shape {x.shape}, the round expects ({public.length},)")
    y = np.asarray(x).astype(dtype) + prg(mine.self_seed, public.length, public.mod_bits)
    for j in public.graph[cid]:
        mask = prg(
            pair_seed(mine.private_key, public.public_keys[j], public.tag, cid, j),
            public.length,
            public.mod_bits,
        )
        y = y + mask if cid < j else y - mask  # wraps: ring arithmetic
    return y


@dataclass
class SecAggClients:
    """The sampled clients' side of one round: keys, seeds and the shares each one holds.

    In a deployment each phone holds its own entry; in simulation this object stands for the
    phones, and the server-side `SecAggServer` never reads it (it only asks `reveal`).
    """

    public: RoundPublic
    secrets: dict[int, ClientSecrets]
    # holder -> owner -> (share of owner's private key, share of owner's self-mask seed)
    held: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    revealed: dict[int, dict[int, str]] = field(default_factory=dict)

    @classmethod
    def setup(
        cls,
        ids: Iterable[int],
        tag: bytes,
        length: int,
        mode: str = "secagg",
        degree: int | None = None,
        threshold: float = 0.5,
        mod_bits: int = 32,
    ) -> SecAggClients:
        """Keys, seeds, the neighbour graph and every owner's shares dealt to its neighbours."""
        ids = sorted(int(i) for i in ids)
        if len(ids) < 2:
            raise SecAggError(f"secure aggregation needs at least 2 clients in a round, got {ids}")
        if mode == "secagg+" and degree is None:
            degree = default_degree(len(ids))
        graph = neighbour_graph(ids, mode, degree, tag)
        keys = {i: X25519PrivateKey.generate() for i in ids}
        raw = serialization.Encoding.Raw
        client_secrets = {
            i: ClientSecrets(
                keys[i].private_bytes(
                    raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                ),
                secrets.token_bytes(32),
            )
            for i in ids
        }
        public = RoundPublic(
            tag=tag,
            public_keys={
                i: keys[i].public_key().public_bytes(raw, serialization.PublicFormat.Raw)
                for i in ids
            },
            graph=graph,
            thresholds={i: share_threshold(len(graph[i]), threshold) for i in ids},
            mod_bits=mod_bits,
            length=length,
        )
        held: dict[int, dict[int, tuple[int, int]]] = {i: {} for i in ids}
        for owner in ids:
            holders, t = graph[owner], public.thresholds[owner]
            sk = shamir_split(client_secrets[owner].private_key, holders, t)
            b = shamir_split(client_secrets[owner].self_seed, holders, t)
            for h in holders:
                held[h][owner] = (sk[h], b[h])
        return cls(public, client_secrets, held)

    def reveal(
        self, holder: int, senders: set[int], dropped: set[int]
    ) -> dict[int, tuple[str, int]]:
        """Holder's answer in the unmasking step: b shares of senders, key shares of the dropped.

        A client never reveals both kinds for one owner (that would unmask the owner's vector).
        """
        answer: dict[int, tuple[str, int]] = {}
        seen = self.revealed.setdefault(holder, {})
        for owner, (sk_share, b_share) in self.held.get(holder, {}).items():
            kind = "b" if owner in senders else "sk" if owner in dropped else None
            if kind is None:
                continue
            if seen.get(owner, kind) != kind:
                raise SecAggError(
                    f"client {holder} refuses: asked for both shares of client {owner}"
                )
            seen[owner] = kind
            answer[owner] = (kind, b_share if kind == "b" else sk_share)
        return answer


class SecAggServer:
    """The aggregating side: receives masked vectors only and unmasks their sum."""

    def __init__(self, public: RoundPublic) -> None:
        self.public = public
        self.received: dict[int, np.ndarray] = {}

    def receive(self, cid: int, masked: np.ndarray) -> None:
        """One client's masked vector (y_i); nothing else of the client's is ever given here."""
        if cid not in self.public.public_keys:
            raise SecAggError(f"client {cid} was not in this secure-aggregation round")
        self.received[cid] = np.asarray(masked, dtype=ring_dtype(self.public.mod_bits))

    def unmask(
        self, responders: Iterable[int], ask: Callable[[int, set[int], set[int]], dict]
    ) -> np.ndarray:
        """The exact sum (mod 2^mod_bits) of the received vectors' plain values.

        `responders`: the clients still online for the unmasking step; `ask(holder, senders,
        dropped)` returns that holder's shares ({owner: (kind, share)}).
        """
        pub = self.public
        senders = set(self.received)
        if not senders:
            raise SecAggError("secure aggregation: no masked vector was received")
        dropped = set(pub.public_keys) - senders
        answers = {h: ask(h, senders, dropped) for h in sorted(set(responders))}
        dtype = ring_dtype(pub.mod_bits)
        total = np.zeros(pub.length, dtype=dtype)
        for cid in sorted(senders):
            total = total + self.received[cid]
        for owner in sorted(senders | dropped):
            kind = "b" if owner in senders else "sk"
            shares = {
                h: answers[h][owner][1]
                for h in answers
                if owner in answers[h] and answers[h][owner][0] == kind
            }
            need = pub.thresholds[owner]
            if len(shares) < need:
                what = "self-mask seed" if kind == "b" else "private key (it dropped)"
                raise SecAggError(
                    f"secure aggregation: client {owner}'s {what} needs {need} shares from its "
                    f"{len(pub.graph[owner])} neighbours, only {len(shares)} answered; "
                    f"below the reconstruction threshold the round cannot be unmasked"
                )
            if kind == "b":
                seed = shamir_combine(dict(list(shares.items())[:need]), 32)
                total = total - prg(seed, pub.length, pub.mod_bits)
                continue
            sk = shamir_combine(dict(list(shares.items())[:need]), 32)
            for j in pub.graph[owner]:
                if j not in senders:
                    continue  # two dropped clients' masks never entered the sum
                mask = prg(
                    pair_seed(sk, pub.public_keys[j], pub.tag, owner, j), pub.length, pub.mod_bits
                )
                # sender j added +mask if j < owner, -mask if j > owner: take it back out
                total = total - mask if j < owner else total + mask
        return total.astype(dtype)
