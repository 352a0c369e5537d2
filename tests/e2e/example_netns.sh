# Sourced by the example tests (tests/e2e/*_example.sh): the two network namespaces each test
# runs in, joined by a veth pair of its own.
# example_netns A B IF_A IF_B NET: namespaces A and B (created here; the caller's cleanup deletes
# them), IF_A in A with NET.1/24 and IF_B in B with NET.2/24, every link up (lo included).
example_netns() {
  local a=$1 b=$2 if_a=$3 if_b=$4 net=$5
  ip netns add "$a"
  ip netns add "$b"
  ip link add "$if_a" netns "$a" type veth peer name "$if_b" netns "$b"
  ip -n "$a" addr add "$net.1/24" dev "$if_a"
  ip -n "$b" addr add "$net.2/24" dev "$if_b"
  ip -n "$a" link set lo up
  ip -n "$b" link set lo up
  ip -n "$a" link set "$if_a" up
  ip -n "$b" link set "$if_b" up
}
