// SPDX-License-Identifier: GPL-2.0-only
/*
 * skerry guest LSM: no container reaches the guest agent's channels.
 *
 * In a skerry guest the agent (PID 1) is the only task in the initial pid
 * namespace; every container process runs in a pid namespace of its own or
 * of its pod. Tasks outside the initial pid namespace may not create
 * AF_VSOCK sockets (the agent's API and the host's vsock back end; io_uring's
 * socket operation comes through the same hook) nor mount a virtio-fs
 * filesystem (the pod's share, whose tag any CAP_SYS_ADMIN task could mount
 * again). This holds whatever the container's seccomp profile says, so a
 * container without one shows "Seccomp: 0" and is still fenced off.
 *
 * Built in by skerry's scripts/build-kernel.sh (security/skerry/); the agent
 * reads /sys/kernel/security/lsm and relies on this module when "skerry" is
 * listed there, and on a seccomp filter per container otherwise.
 */
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/lsm_hooks.h>
#include <linux/pid_namespace.h>
#include <linux/sched.h>
#include <linux/socket.h>
#include <linux/string.h>

static bool skerry_in_container(void)
{
	return task_active_pid_ns(current) != &init_pid_ns;
}

static int skerry_socket_create(int family, int type, int protocol, int kern)
{
	if (family == AF_VSOCK && !kern && skerry_in_container())
		return -EAFNOSUPPORT;
	return 0;
}

/*
 * Every new mount names its source through here, mount(2) and fsconfig(2)
 * alike. -ENOPARAM passes the parameter on to the filesystem.
 */
static int skerry_fs_context_parse_param(struct fs_context *fc,
					 struct fs_parameter *param)
{
	if (fc->purpose == FS_CONTEXT_FOR_MOUNT && fc->fs_type &&
	    !strcmp(fc->fs_type->name, "virtiofs") && skerry_in_container())
		return -EPERM;
	return -ENOPARAM;
}

static struct security_hook_list skerry_hooks[] __lsm_ro_after_init = {
	LSM_HOOK_INIT(socket_create, skerry_socket_create),
	LSM_HOOK_INIT(fs_context_parse_param, skerry_fs_context_parse_param),
};

static int __init skerry_init(void)
{
	pr_info("skerry: containers denied AF_VSOCK and virtio-fs mounts\n");
	security_add_hooks(skerry_hooks, ARRAY_SIZE(skerry_hooks), "skerry");
	return 0;
}

DEFINE_LSM(skerry) = {
	.name = "skerry",
	.init = skerry_init,
};
