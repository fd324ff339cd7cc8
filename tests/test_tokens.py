from hypothesis import given, strategies as st

from bltlab import tokens

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


def test_readable_pieces_cover_every_position_once():
    ids = tokens.encode("a é\n🙂\t", eos=True) + [tokens.PAD, tokens.MASK]
    ps = tokens.pieces(ids)
    assert [p for p, _, _ in ps] == [sum(w for _, w, _ in ps[:k]) for k in range(len(ps))]
    assert sum(w for _, w, _ in ps) == len(ids)
    assert tokens.readable(ids) == "⟨BOS⟩a é⏎🙂⇥⟨EOS⟩⟨PAD⟩▒"
    assert tokens.readable("a\tb\n".encode(), lines=True) == "a\tb\n"


def test_readable_escapes_bytes_that_form_no_printable_character():
    assert tokens.readable(b"caf\xc3") == "caf\\xc3"  # a character cut in half
    assert tokens.readable(b"\xa9x\x00\x7f") == "\\xa9x\\x00\\x7f"  # stray continuation, control bytes
    assert tokens.readable(b"\\x41") == "\\x41"  # literal text stays four pieces, so it is told apart
    assert [w for _, w, _ in tokens.pieces(b"\\x41")] == [1, 1, 1, 1]
    assert tokens.readable([999]) == "⟨id 999⟩"


@given(st.binary(max_size=40))
def test_labels_one_per_byte(data):
    labels = tokens.labels(data)
    assert len(labels) == len(data)
    assert all(lab == "␣" for lab, b in zip(labels, data) if b == 0x20)
    assert tokens.labels("é".encode()) == ["é", "\\xa9"]
    assert [tokens.glyph(b) for b in (0x41, 0x20, 0x0A, 0xC3, None)] == ["A", "␣", "⏎", "\\xc3", "⟨EOS⟩"]
