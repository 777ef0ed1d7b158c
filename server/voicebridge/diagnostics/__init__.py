"""What the console's Debug panel and `voicebridge sdp explain` show: SDP explained and checked for the classic
mistakes (`sdp_explain`, rendered as text by `sdp_render`), and each peer connection's state timeline and RTP stats
(`pc_debug`). Nothing here carries media."""
