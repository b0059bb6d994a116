# The lab's VyOS gateway image: installs VyOS from the ISO labctl publishes onto a raw disk and
# applies the gateway's base configuration. Built by `labctl apply` on a runner with KVM; not
# run in labctl's own CI. iso_url and iso_checksum come from the manifest's references.

packer {
  required_plugins {
    qemu = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

variable "iso_url" {
  type = string
}

variable "iso_checksum" {
  type = string
}

variable "disk_size" {
  type    = string
  default = "10G"
}

# Secret: comes from PKR_VAR_vyos_password in the environment, never from the manifest.
variable "vyos_password" {
  type      = string
  sensitive = true
}

source "qemu" "vyos" {
  iso_url          = var.iso_url
  iso_checksum     = var.iso_checksum
  output_directory = "output"
  vm_name          = "vyos-gateway.raw"
  format           = "raw"
  disk_size        = var.disk_size
  accelerator      = "kvm"
  memory           = 2048
  cpus             = 2
  headless         = true
  net_device       = "virtio-net"
  disk_interface   = "virtio"
  boot_wait        = "30s"
  ssh_username     = "vyos"
  ssh_password     = var.vyos_password
  ssh_timeout      = "20m"
  shutdown_command = "sudo poweroff"

  # Log in on the live ISO, run the installer non-interactively, reboot into the disk.
  boot_command = [
    "vyos<enter><wait>vyos<enter><wait>",
    "install image<enter><wait3>",
    "<enter><wait>",                                      # image name: default
    "<enter><wait>",                                      # console: KVM
    "${var.vyos_password}<enter><wait>${var.vyos_password}<enter><wait>",
    "<enter><wait>",                                      # disk: the only one
    "y<enter><wait60>",                                   # confirm and partition
    "<enter><wait5>",                                     # use all space
    "reboot<enter><wait>y<enter><wait90s>",
    "vyos<enter><wait>${var.vyos_password}<enter><wait>",
    "configure<enter>set interfaces ethernet eth0 address dhcp<enter>",
    "set service ssh<enter>commit<enter>save<enter>exit<enter>",
  ]
}

build {
  sources = ["source.qemu.vyos"]

  provisioner "file" {
    source      = "scripts/gateway.vbash"
    destination = "/tmp/gateway.vbash"
  }

  provisioner "shell" {
    inline = ["sg vyattacfg -c '/bin/vbash /tmp/gateway.vbash'"]
  }
}
