"""deploy/e2e/kit.py without podman: the host ports a run publishes its pods on."""

import socket

from deploy.e2e import kit


def test_host_ports_hand_out_free_blocks_that_do_not_overlap():
    blocks = [(kit.host_ports(n), n) for n in (1, 5, 3, 100)]
    taken = [port for first, n in blocks for port in range(first, first + n)]
    assert len(set(taken)) == len(taken), "a port handed out twice in one run"
    assert all(p in kit.PORT_RANGE for p in taken)
    # The kit's own blocks are apart from these and from each other too.
    kit_ports = [kit.MASTER_PORT, kit.API_PORT, kit.ADMIN_PORT, kit.EXPORTER_PORT, *kit.BADCERT_PORTS]
    assert len(set(kit_ports)) == len(kit_ports) and not set(kit_ports) & set(taken)


def test_host_ports_step_over_a_port_another_program_listens_on():
    port = kit.host_ports(1) + 2
    with socket.socket() as busy:
        busy.bind(("", port))
        busy.listen()
        # Point the next allocation at a block that holds the busy port.
        kit._port_cursor[0] = port - 2
        first = kit.host_ports(4)
        assert not first <= port < first + 4, f"block {first}..{first + 3} holds busy port {port}"
        assert all(kit.port_free(p) for p in range(first, first + 4))
