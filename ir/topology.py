"""The chip-to-chip network of a machine at a given chip count: which port of
which chip is cabled to which, and the fixed route between any two chips.

Chips are numbered 0..chips-1 and each has `machine.c2c.links` ports. A link
direction is named by its sender: `(chip, port)` carries bytes out of `chip`
through `port`; the cable's other end is `peer(chip, port)`. A route is the
tuple of ports taken, hop by hop, from the source chip.

  dragonfly  nodes of `chips_per_node` chips, fully connected by local ports
             0..local_links-1. A node's G = chips_per_node * global_links global
             ports: its q-th is chip q // global_links, port local_links +
             q % global_links. Up to G + 1 nodes, every two nodes share one
             global cable (node n's q-th port goes to node (n + q + 1) mod
             nodes). Beyond, nodes form racks of `nodes_per_rack` as Groq's
             system does (ISCA 2022): the nodes of a rack are fully connected,
             P = G // 2 // (nodes_per_rack - 1) cables between every two of
             them (tsp-v1: 2, on ports 0..15), and the remaining G - P *
             (nodes_per_rack - 1) ports of every node join the racks, one
             cable between every two racks (tsp-v1: 16 per node, 144 per rack,
             so up to 145 racks: 10,440 chips). Counts: 1..chips_per_node,
             whole nodes up to G + 1 of them, then whole racks.
  ring       port 0 to the next chip, port 1 to the previous one.
  torus2d    rows of `width` chips with wrap-around: ports 0 east, 1 west,
             2 south, 3 north. Counts: whole rows.

Routes are shortest paths, found breadth-first with ports tried in ascending
order: a pure function of the topology, the same on every machine.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import LpucError
from .machine import Machine


@dataclass(frozen=True)
class Network:
    kind: str
    chips: int
    ports: int                                        # ports per chip
    cables: dict[tuple[int, int], tuple[int, int]] = field(repr=False, compare=False)
    _routes: dict = field(default_factory=dict, repr=False, compare=False)

    def peer(self, chip: int, port: int) -> tuple[int, int] | None:
        """(chip, port) at the other end of `port` of `chip`; None when it is not cabled."""
        return self.cables.get((chip, port))

    def route(self, src: int, dst: int) -> tuple[int, ...]:
        """The ports taken hop by hop from `src` to `dst` (empty when src == dst)."""
        key = (src, dst)
        if key not in self._routes:
            self._routes[key] = self._shortest(src, dst)
        return self._routes[key]

    def _shortest(self, src: int, dst: int) -> tuple[int, ...]:
        came: dict[int, tuple[int, int]] = {src: (-1, -1)}
        queue = deque([src])
        while queue and dst not in came:
            chip = queue.popleft()
            for port in range(self.ports):
                end = self.cables.get((chip, port))
                if end is not None and end[0] not in came:
                    came[end[0]] = (chip, port)
                    queue.append(end[0])
        if dst not in came:
            raise LpucError(f"no route from chip {src} to chip {dst} in this {self.kind} of {self.chips} chips")
        ports, chip = [], dst
        while chip != src:
            chip, port = came[chip]
            ports.append(port)
        return tuple(reversed(ports))

    def hops(self, src: int, route: tuple[int, ...]) -> list[tuple[int, int]]:
        """The link directions (chip, port) a route from `src` takes; raises on a port that is not cabled."""
        out, chip = [], src
        for port in route:
            end = self.cables.get((chip, port))
            if end is None:
                raise LpucError(f"chip {chip} has no link on port {port}")
            out.append((chip, port))
            chip = end[0]
        return out

    def destination(self, src: int, route: tuple[int, ...]) -> tuple[int, int]:
        """(chip, arrival port) where a route from `src` ends; raises on a port that is not cabled."""
        chip, port = src, -1
        for p in route:
            end = self.cables.get((chip, p))
            if end is None:
                raise LpucError(f"chip {chip} has no link on port {p}")
            chip, port = end
        return chip, port

    def links(self) -> list[tuple[int, int]]:
        """Every link direction, sorted."""
        return sorted(self.cables)


def link_name(chip: int, port: int) -> str:
    return f"c{chip}.l{port}"


def supported_chips(machine: Machine, n: int) -> bool:
    t = machine.topology
    if n < 1 or n > most_chips(machine):
        return False
    if n == 1:
        return True
    if t.kind == "dragonfly":
        if n <= t.chips_per_node:
            return True
        nodes, whole = divmod(n, t.chips_per_node)
        return whole == 0 and (nodes <= _node_ports(t) + 1 or nodes % t.nodes_per_rack == 0)
    if t.kind == "torus2d":
        return n % t.width == 0
    return True


def spanned_nodes(machine: Machine, chips: int) -> int:
    """Chips per node when a group of `chips` consecutive chips (from a node's first) spans several whole
    dragonfly nodes, else 0: what sums over the group add node by node first (compiler/passes.add_up)."""
    t = machine.topology
    node = t.chips_per_node if t.kind == "dragonfly" else 0
    return node if node and chips > node and chips % node == 0 else 0


def most_chips(machine: Machine) -> int:
    """The largest chip count lpuc builds a network for: the machine's max_chips, and for a dragonfly the
    racks that one cable between every two of them can join (the nodes that one global cable between every
    two of them can join, when the machine has no racks)."""
    t = machine.topology
    if t.kind != "dragonfly":
        return t.max_chips
    racks = _rack_ports(t)
    if racks is None:
        return min(t.max_chips, t.chips_per_node * (_node_ports(t) + 1))
    return min(t.max_chips, t.chips_per_node * t.nodes_per_rack * (t.nodes_per_rack * racks[1] + 1))


def _node_ports(t) -> int:
    """A dragonfly node's global ports."""
    return t.chips_per_node * t.global_links


def _rack_ports(t) -> tuple[int, int] | None:
    """(cables between two nodes of a rack, ports per node to other racks); None when the machine has no
    racks (nodes_per_rack < 2, or too few global ports to join a rack's nodes and the racks)."""
    if t.nodes_per_rack < 2:
        return None
    pair = _node_ports(t) // 2 // (t.nodes_per_rack - 1)
    outside = _node_ports(t) - pair * (t.nodes_per_rack - 1)
    return (pair, outside) if pair > 0 and outside > 0 else None


def round_chips(machine: Machine, n: int) -> int:
    """The smallest chip count >= n that the topology supports."""
    for m in range(max(n, 1), most_chips(machine) + 1):
        if supported_chips(machine, m):
            return m
    raise LpucError(f"{n} chips: {_limit(machine)}")


def _limit(machine: Machine) -> str:
    t = machine.topology
    if most_chips(machine) < t.max_chips:
        if _rack_ports(t) is None:
            return (f"lpuc joins at most {most_chips(machine) // t.chips_per_node} {machine.name} dragonfly nodes "
                    f"({most_chips(machine)} chips, a global cable between every two nodes)")
        return (f"lpuc joins at most {most_chips(machine) // (t.chips_per_node * t.nodes_per_rack)} "
                f"{machine.name} racks ({most_chips(machine)} chips, a cable between every two racks)")
    return f"a {machine.name} {t.kind} has at most {t.max_chips} chips"


def check_chips(machine: Machine, chips: int) -> None:
    """An LpucError when the topology of `machine` has no network of `chips` chips."""
    if chips > most_chips(machine):
        raise LpucError(f"--chips {chips}: {_limit(machine)}")
    if not supported_chips(machine, chips):
        below = next(m for m in range(chips - 1, 0, -1) if supported_chips(machine, m))  # (1 chip always is)
        raise LpucError(f"--chips {chips}: a {machine.name} {machine.topology.kind} cannot have {chips} chips "
                        f"({_sizes(machine)}); the nearest sizes it supports are {below} and "
                        f"{round_chips(machine, chips)}")


@lru_cache(maxsize=8)
def network(machine: Machine, chips: int) -> Network:
    """The network of `chips` chips of `machine`; an LpucError when the topology has no such size.
    A pure function of its arguments, built once per machine and size (every Target of them shares it)."""
    t, ports = machine.topology, machine.c2c.links
    check_chips(machine, chips)
    cables: dict[tuple[int, int], tuple[int, int]] = {}
    if t.kind == "dragonfly":
        if t.local_links + t.global_links > ports:
            raise LpucError(f"{machine.name}: local_links + global_links exceed c2c.links ({ports})")
        size = min(chips, t.chips_per_node)
        if size - 1 > t.local_links:
            raise LpucError(f"{machine.name}: a node of {size} chips needs {size - 1} local links per chip")
        nodes = chips // size
        for node in range(nodes):
            for a in range(size):
                for b in range(size):
                    if a != b:
                        cables[node * size + a, b if b < a else b - 1] = (node * size + b, a if a < b else a - 1)

        def port(node: int, q: int) -> tuple[int, int]:  # a node's q-th global port
            return node * size + q // t.global_links, t.local_links + q % t.global_links

        if nodes <= _node_ports(t) + 1:
            _join_all(cables, nodes, port)
        else:  # racks of nodes_per_rack: nodes joined inside each rack, then the racks
            rack = t.nodes_per_rack
            pair, outside = _rack_ports(t)
            for r in range(nodes // rack):
                for m in range(pair):
                    _join_all(cables, rack, lambda i, k, r=r, m=m: port(r * rack + i, k * pair + m))
            inside = pair * (rack - 1)
            _join_all(cables, nodes // rack,
                      lambda r, g: port(r * rack + g // outside, inside + g % outside))
    elif t.kind == "ring":
        if chips > 1:
            if ports < 2:
                raise LpucError(f"{machine.name}: a ring needs 2 links per chip")
            for c in range(chips):
                cables[c, 0] = ((c + 1) % chips, 1)
                cables[c, 1] = ((c - 1) % chips, 0)
    else:  # torus2d
        if ports < 4:
            raise LpucError(f"{machine.name}: a 2-D torus needs 4 links per chip")
        width, rows = t.width if chips >= t.width else chips, max(chips // t.width, 1)
        for c in range(chips):
            x, y = c % width, c // width
            for port, (dx, dy) in enumerate(((1, 0), (-1, 0), (0, 1), (0, -1))):
                peer = (x + dx) % width + ((y + dy) % rows) * width
                if peer != c:
                    cables[c, port] = (peer, port ^ 1)
    return Network(t.kind, chips, ports, cables)


def _sizes(machine: Machine) -> str:
    t = machine.topology
    if t.kind == "dragonfly":
        nodes = f"1 to {t.chips_per_node} chips, or whole nodes of {t.chips_per_node}"
        if _rack_ports(t) is None:
            return nodes
        return (f"{nodes} up to {t.chips_per_node * (_node_ports(t) + 1)}, "
                f"then whole racks of {t.chips_per_node * t.nodes_per_rack}")
    if t.kind == "torus2d":
        return f"whole rows of {t.width} chips"
    return f"1 to {t.max_chips} chips"


def _join_all(cables: dict, groups: int, end) -> None:
    """One cable between every two of `groups` groups: group i's k-th end, `end(i, k)`, goes to group
    (i + k + 1) mod groups (whose end back is its (i - j - 1) mod groups-th)."""
    for i in range(groups):
        for k in range(groups - 1):
            j = (i + k + 1) % groups
            cables[end(i, k)] = end(j, (i - j - 1) % groups)
