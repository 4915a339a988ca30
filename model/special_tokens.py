"""The vocabulary's reserved ids, shared by the model (decoding) and the tokenizer."""

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
