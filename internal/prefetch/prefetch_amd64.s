#include "textflag.h"

// func Write(p *byte)
TEXT ·Write(SB), NOSPLIT|NOFRAME, $0-8
	MOVQ	p+0(FP), AX
	// PREFETCHW (AX), encoded by hand (0F 0D /1): the Go assembler has
	// no mnemonic for it.
	BYTE	$0x0F; BYTE $0x0D; BYTE $0x08
	RET

// func Read(p *byte)
TEXT ·Read(SB), NOSPLIT|NOFRAME, $0-8
	MOVQ	p+0(FP), AX
	PREFETCHT0	(AX)
	RET
