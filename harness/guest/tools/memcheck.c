/* pcih-memcheck: a guest working set whose every page can be checked.
 *
 * Why: a migration that loses a dirty page leaves the destination with a page
 * from an earlier generation.  This program keeps two regions A and B of N
 * pages each; sweep g visits page i of A and page i of B, first CHECKS that
 * both still hold generation g-1 (so every write of every generation is
 * read back before it is overwritten: nothing lost can hide), then writes
 * generation g.  A mismatch is counted, described (virtual and guest-physical
 * address through /proc/self/pagemap, expected and found words) and printed
 * at level 0 on /dev/kmsg, so it reaches the serial console too.
 *
 * Freestanding (no libc): the harness builds it on the host with gcc and
 * copies it into the guest over SSH; it needs nothing from the guest image.
 *
 * usage: memcheck DIR PAGES RATE_PAGES_PER_S
 *   DIR/state   rewritten (atomically) several times a sweep:
 *               "sweep=S done=D checked=C swept=W bad=B pages=N first_bad=..."
 *               (W: the page checks the last completed sweep made, A and B apart)
 *   DIR/stop    the program exits at the end of the current sweep
 *   DIR/inject  "P": skip the writes of page P (A and B) in the next sweep,
 *               the harness's own lost write, to show a mismatch is caught
 * RATE 0 means flat out; otherwise page visits (A+B) per second are capped,
 * which bounds the dirty rate that migration has to keep up with.
 */

typedef unsigned long u64;
typedef long s64;

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define TAG_A 0x50434948414d0041UL /* "PCIHAM.A" */
#define TAG_B 0x50434948414d0042UL

static s64 sys(s64 n, s64 a, s64 b, s64 c, s64 d, s64 e, s64 f)
{
	register s64 r10 __asm__("r10") = d;
	register s64 r8 __asm__("r8") = e;
	register s64 r9 __asm__("r9") = f;
	s64 ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_mmap 9
#define SYS_pread 17
#define SYS_access 21
#define SYS_nanosleep 35
#define SYS_rename 82
#define SYS_unlink 87
#define SYS_mlock 149
#define SYS_setpriority 141
#define SYS_clock_gettime 228
#define SYS_exit_group 231

static u64 slen(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	return n;
}

/* A small append-only text buffer. */
struct buf {
	char b[1024];
	u64 n;
};

static void put(struct buf *o, const char *s)
{
	while (*s && o->n < sizeof(o->b) - 1)
		o->b[o->n++] = *s++;
	o->b[o->n] = 0;
}

static void putu(struct buf *o, u64 v)
{
	char t[24];
	int i = 0;
	do {
		t[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (i && o->n < sizeof(o->b) - 1)
		o->b[o->n++] = t[--i];
	o->b[o->n] = 0;
}

static void putx(struct buf *o, u64 v)
{
	char t[24];
	int i = 0;
	do {
		t[i++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	put(o, "0x");
	while (i && o->n < sizeof(o->b) - 1)
		o->b[o->n++] = t[--i];
	o->b[o->n] = 0;
}

static u64 parse_u(const char *s)
{
	u64 v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (u64)(*s++ - '0');
	return v;
}

static char dir[200];
static char path_state[240], path_new[240], path_stop[240], path_inject[240];

static void join(char *out, const char *name)
{
	u64 i = 0, j = 0;
	while (dir[i]) {
		out[i] = dir[i];
		i++;
	}
	out[i++] = '/';
	while (name[j])
		out[i++] = name[j++];
	out[i] = 0;
}

static u64 now_ns(void)
{
	s64 ts[2];
	sys(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, (s64)ts, 0, 0, 0, 0);
	return (u64)ts[0] * 1000000000UL + (u64)ts[1];
}

static void sleep_ns(u64 ns)
{
	s64 ts[2] = {(s64)(ns / 1000000000UL), (s64)(ns % 1000000000UL)};
	sys(SYS_nanosleep, (s64)ts, 0, 0, 0, 0, 0);
}

static void kmsg(const char *text)
{
	s64 fd = sys(SYS_open, (s64) "/dev/kmsg", 1 /* O_WRONLY */, 0, 0, 0, 0);
	if (fd >= 0) {
		sys(SYS_write, fd, (s64)text, (s64)slen(text), 0, 0, 0);
		sys(SYS_close, fd, 0, 0, 0, 0, 0);
	}
}

/* Guest-physical address of a virtual address (root sees the PFN), 0 if unknown. */
static u64 phys_of(u64 va)
{
	u64 entry = 0;
	s64 fd = sys(SYS_open, (s64) "/proc/self/pagemap", 0, 0, 0, 0, 0);
	if (fd < 0)
		return 0;
	s64 got = sys(SYS_pread, fd, (s64)&entry, 8, (s64)(va / PAGE * 8), 0, 0);
	sys(SYS_close, fd, 0, 0, 0, 0, 0);
	if (got != 8 || !(entry >> 63))
		return 0;
	return (entry & ((1UL << 55) - 1)) * PAGE + va % PAGE;
}

static u64 sweep, done, checked, bad, pages, injected_page = ~0UL, injected_sweep;
static u64 swept, this_sweep; /* page checks of the last completed sweep, of this one */
static struct buf first_bad;

static void write_state(void)
{
	struct buf o = {.n = 0};
	put(&o, "sweep=");
	putu(&o, sweep);
	put(&o, " done=");
	putu(&o, done);
	put(&o, " checked=");
	putu(&o, checked);
	put(&o, " swept=");
	putu(&o, swept);
	put(&o, " bad=");
	putu(&o, bad);
	put(&o, " pages=");
	putu(&o, pages);
	if (injected_page != ~0UL) {
		put(&o, " injected=");
		putu(&o, injected_page);
		put(&o, "@");
		putu(&o, injected_sweep);
	}
	put(&o, " first_bad=");
	put(&o, first_bad.n ? first_bad.b : "-");
	put(&o, "\n");
	s64 fd = sys(SYS_open, (s64)path_new, 01 | 0100 | 01000 /* WRONLY|CREAT|TRUNC */, 0644, 0,
		     0, 0);
	if (fd < 0)
		return;
	sys(SYS_write, fd, (s64)o.b, (s64)o.n, 0, 0, 0);
	sys(SYS_close, fd, 0, 0, 0, 0, 0);
	sys(SYS_rename, (s64)path_new, (s64)path_state, 0, 0, 0, 0);
}

static void fill(u64 *p, u64 tag, u64 idx, u64 gen)
{
	p[0] = tag;
	p[1] = idx;
	p[2] = gen;
	p[WORDS - 1] = gen ^ tag ^ idx;
}

static int holds(const u64 *p, u64 tag, u64 idx, u64 gen)
{
	return p[0] == tag && p[1] == idx && p[2] == gen && p[WORDS - 1] == (gen ^ tag ^ idx);
}

/* Record one bad page; the first one is described in full. */
static void report(u64 *a, u64 *b, u64 i, u64 want)
{
	int a_ok = holds(a, TAG_A, i, want), b_ok = holds(b, TAG_B, i, want);
	u64 *p = a_ok ? b : a;
	bad++;
	if (first_bad.n)
		return;
	struct buf *o = &first_bad;
	put(o, "sweep:");
	putu(o, sweep);
	put(o, ",page:");
	putu(o, i);
	put(o, ",region:");
	put(o, a_ok ? "B" : (b_ok ? "A" : "AB"));
	put(o, ",va:");
	putx(o, (u64)p);
	put(o, ",pa:");
	putx(o, phys_of((u64)p));
	put(o, ",expected_gen:");
	putu(o, want);
	put(o, ",found_gen_A:");
	putu(o, a[2]);
	put(o, ",found_gen_B:");
	putu(o, b[2]);
	put(o, ",found_words:");
	putx(o, p[0]);
	put(o, "/");
	putx(o, p[1]);
	put(o, "/");
	putx(o, p[2]);
	put(o, "/");
	putx(o, p[WORDS - 1]);
	struct buf k = {.n = 0};
	put(&k, "<0>pcih-memcheck: MISMATCH ");
	put(&k, first_bad.b);
	put(&k, "\n");
	kmsg(k.b);
}

static int exists(const char *path)
{
	return sys(SYS_access, (s64)path, 0, 0, 0, 0, 0) == 0;
}

static u64 read_inject(void)
{
	char t[32];
	s64 fd = sys(SYS_open, (s64)path_inject, 0, 0, 0, 0, 0);
	if (fd < 0)
		return ~0UL;
	s64 n = sys(SYS_read, fd, (s64)t, sizeof(t) - 1, 0, 0, 0);
	sys(SYS_close, fd, 0, 0, 0, 0, 0);
	sys(SYS_unlink, (s64)path_inject, 0, 0, 0, 0, 0);
	if (n <= 0)
		return ~0UL;
	t[n] = 0;
	return parse_u(t);
}

static int run(int argc, char **argv)
{
	if (argc < 4) {
		kmsg("<3>pcih-memcheck: usage: memcheck DIR PAGES RATE\n");
		return 2;
	}
	for (u64 i = 0; argv[1][i] && i < sizeof(dir) - 1; i++)
		dir[i] = argv[1][i];
	join(path_state, "state");
	join(path_new, "state.new");
	join(path_stop, "stop");
	join(path_inject, "inject");
	pages = parse_u(argv[2]);
	u64 rate = parse_u(argv[3]);
	/* nice 19: dropbear and the harness's checks get the vCPU first. */
	sys(SYS_setpriority, 0 /* PRIO_PROCESS */, 0, 19, 0, 0, 0);
	u64 len = pages * PAGE;
	/* MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE, then mlock: resident, never swapped. */
	s64 ma = sys(SYS_mmap, 0, (s64)len, 3, 0x22 | 0x8000, -1, 0);
	s64 mb = sys(SYS_mmap, 0, (s64)len, 3, 0x22 | 0x8000, -1, 0);
	if (ma < 0 && ma > -4096)
		return 3;
	if (mb < 0 && mb > -4096)
		return 3;
	sys(SYS_mlock, ma, (s64)len, 0, 0, 0, 0);
	sys(SYS_mlock, mb, (s64)len, 0, 0, 0, 0);
	char *A = (char *)ma, *B = (char *)mb;
	for (u64 i = 0; i < pages; i++) {
		fill((u64 *)(A + i * PAGE), TAG_A, i, 0);
		fill((u64 *)(B + i * PAGE), TAG_B, i, 0);
	}
	write_state();
	u64 start = now_ns(), visits = 0;
	u64 chunk = pages / 8 ? pages / 8 : 1;
	for (sweep = 1;; sweep++) {
		u64 skip = read_inject();
		if (skip != ~0UL) {
			injected_page = skip;
			injected_sweep = sweep;
		}
		this_sweep = 0;
		for (u64 i = 0; i < pages; i++) {
			u64 *a = (u64 *)(A + i * PAGE), *b = (u64 *)(B + i * PAGE);
			if (!holds(a, TAG_A, i, sweep - 1) || !holds(b, TAG_B, i, sweep - 1))
				report(a, b, i, sweep - 1);
			checked += 2;
			this_sweep += 2;
			if (i != skip) {
				fill(a, TAG_A, i, sweep);
				fill(b, TAG_B, i, sweep);
			}
			visits += 2;
			if (rate && (visits & 255) == 0) {
				u64 due = start + visits * 1000000000UL / rate, t = now_ns();
				if (due > t)
					sleep_ns(due - t);
			}
			if ((i + 1) % chunk == 0)
				write_state();
		}
		/* A skipped page must fail the next check, not this sweep's repair. */
		done = sweep;
		swept = this_sweep;
		write_state();
		if (exists(path_stop))
			break;
	}
	return 0;
}

void __attribute__((noreturn, used)) start_c(long *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	sys(SYS_exit_group, run(argc, argv), 0, 0, 0, 0, 0);
	__builtin_unreachable();
}

__asm__(".globl _start\n_start:\n\txor %rbp,%rbp\n\tmov %rsp,%rdi\n\tand $-16,%rsp\n\tcall start_c\n");
