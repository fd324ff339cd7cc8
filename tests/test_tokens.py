from hypothesis import given, strategies as st

from bltlab.tokens import BOS, EOS, MASK, N_IDS, OFFSET, PAD, decode, encode, encode_tensor, ids_to_bytes


def test_ids_layout():
    assert (PAD, BOS, EOS, OFFSET, N_IDS, MASK) == (0, 1, 2, 4, 260, 260)
    assert encode("A") == [BOS, 65 + OFFSET]
    assert encode(b"\x00\xff", bos=False, eos=True) == [4, 259, EOS]


@given(st.binary(max_size=64))
def test_bytes_round_trip(data):
    assert ids_to_bytes(encode(data)) == data
    decode(encode(data))  # never raises, even on invalid UTF-8


def test_invalid_utf8_decodes_with_replacement():
    assert decode(encode(b"ok\xff\xfe")) == "ok\ufffd\ufffd"
    assert decode([BOS, 200, EOS, PAD]) == decode([200])


def test_batch_padding():
    ids, lens = encode_tensor(["ab", "", "é"])
    assert ids.shape == (3, 3) and lens.tolist() == [3, 1, 3]
    assert ids[1].tolist() == [BOS, PAD, PAD]
